#!/usr/bin/env bash
# Run a command inside a private network namespace with loopback and a veth pair on the
# test range 198.18.0.0/15 (RFC 2544 benchmarking addresses): WebRTC peers (Chromium, aiortc)
# find ICE host candidates there, and nothing can leave the machine.
#   usage: tests/netns_run.sh COMMAND [ARGS...]      (needs root or CAP_SYS_ADMIN)
set -euo pipefail
if [ "${AVATAR_NETNS:-}" != "1" ]; then
  exec unshare -n -- env AVATAR_NETNS=1 "$0" "$@"
fi
ip link set lo up
ip link add avtest0 type veth peer name avtest1
ip addr add 198.18.0.1/15 dev avtest0
ip addr add 198.18.0.2/15 dev avtest1
ip link set avtest0 up
ip link set avtest1 up
exec "$@"
