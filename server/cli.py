"""The ``avatar`` command: serve, render, visemes, camera, client, avatars, add-photo, train, eval."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from server.config import AppConfig, load_config
from server.errors import AvatarError, ConfigError
from server.logs import setup_logging


def _config(args: argparse.Namespace) -> AppConfig:
    overrides: dict[str, dict[str, object]] = {}
    if getattr(args, "model", None):
        overrides.setdefault("visemes", {})["model"] = args.model
    if getattr(args, "engine", None):
        overrides.setdefault("visemes", {})["engine"] = args.engine
    if getattr(args, "host", None):
        overrides.setdefault("server", {})["host"] = args.host
    if getattr(args, "port", None):
        overrides.setdefault("server", {})["port"] = args.port
    if getattr(args, "fps", None):
        overrides.setdefault("video", {})["fps"] = args.fps
    if getattr(args, "size", None):
        w, _, h = args.size.partition("x")
        overrides.setdefault("video", {}).update(width=int(w), height=int(h or w))
    if getattr(args, "record_stages", None):
        overrides.setdefault("stage", {})["record"] = True
    if getattr(args, "log_format", None):
        overrides.setdefault("server", {})["log_format"] = args.log_format
    if getattr(args, "auth", None):
        overrides.setdefault("server", {})["auth"] = args.auth
    if getattr(args, "data_dir", None):
        overrides.setdefault("avatars", {})["data_dir"] = str(args.data_dir)
    return load_config(args.config, overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    """Start the HTTP/WebSocket/WebRTC server."""
    from aiohttp import web

    from server import tls
    from server.app import ACCESS, build_app

    cfg = _config(args)
    setup_logging(cfg.server.log_format, verbose=args.verbose)
    files: tls.TlsFiles | None = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        files = tls.given(args.tls_cert, args.tls_key)
    elif args.self_signed:
        files = tls.self_signed(cfg.avatars.data_dir, tls.host_names(cfg.server.host))
    ssl_ctx = tls.ssl_context(files) if files is not None else None
    app = build_app(cfg)
    scheme = "https" if ssl_ctx is not None else "http"
    url = f"{scheme}://{cfg.server.host}:{cfg.server.port}/"
    if files is not None:
        print(f"TLS certificate {files.cert} SHA-256 {files.fingerprint}" + (f" for {', '.join(files.names)}" if files.names else ""), flush=True)
    access = app[ACCESS]
    if access.required:
        from server.avatars import OPERATOR

        token = access.issuer.create("presenter", ttl_s=12 * 3600, subject=OPERATOR)
        print(f"access tokens required: presenter link (12 h) {url}?token={token}", flush=True)
    print(f"avatar server: open {url}", flush=True)
    # keepalive_timeout also bounds a connection that never sends a request (aiohttp arms it on connect)
    web.run_app(app, host=cfg.server.host, port=cfg.server.port, print=None, handle_signals=True, ssl_context=ssl_ctx,
                keepalive_timeout=cfg.server.keepalive_timeout_s)
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    """Mint an access token with this server's secret; the token alone on the last line."""
    from server.tokens import TokenIssuer, load_secret

    cfg = _config(args)
    issuer = TokenIssuer(load_secret(cfg.server.token_secret, cfg.avatars.data_dir))
    token = issuer.create(args.role, stage=args.stage, ttl_s=args.ttl, subject=args.subject)
    print(f"role {args.role}" + (f", stage {args.stage}" if args.stage else "") + f", valid {args.ttl:.0f} s:", file=sys.stderr)
    print(token)
    return 0


def _models(cfg: AppConfig) -> object:
    from server.pipeline.runner import load_models

    return load_models(cfg)


def cmd_render(args: argparse.Namespace) -> int:
    """Audio file → MP4 of the avatar with the audio muxed in."""
    from server.offline import render_file

    cfg = _config(args)
    models = _models(cfg)
    t0 = time.perf_counter()
    result = render_file(args.input, args.output, cfg, models, args.avatar, progress=not args.quiet)  # type: ignore[arg-type]
    dt = time.perf_counter() - t0
    print(
        f"wrote {args.output}: {result.video_frames} frames, {result.duration_s:.2f} s of audio in {dt:.2f} s "
        f"({result.duration_s / max(dt, 1e-9):.1f}x real time), model {result.model}, lookahead {result.lookahead_hops * 10} ms",
        file=sys.stderr,
    )
    return 0


def cmd_visemes(args: argparse.Namespace) -> int:
    """Audio file → visemes as JSON or Rhubarb JSON/TSV."""
    import asyncio

    from server.offline import format_visemes, run_offline

    cfg = _config(args)
    models = _models(cfg)
    result = asyncio.run(run_offline(args.input, cfg, models))  # type: ignore[arg-type]
    text = format_visemes(result, args.format, str(args.input))
    if args.output is None or str(args.output) == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
    print(f"model {result.model}, lookahead {result.lookahead_hops * 10} ms, {result.duration_s:.2f} s of audio", file=sys.stderr)
    return 0


def cmd_avatars(args: argparse.Namespace) -> int:
    """List avatars: name, then kind."""
    from server.avatars import AvatarRegistry, format_avatar_lines

    cfg = _config(args)
    for line in format_avatar_lines(AvatarRegistry(cfg.avatars.data_dir).list()):
        print(line)
    return 0


def cmd_add_photo(args: argparse.Namespace) -> int:
    """Register a photo avatar (needs a consent statement)."""
    from server.avatars import AvatarRegistry

    cfg = _config(args)
    info = AvatarRegistry(cfg.avatars.data_dir).add_photo(args.image, args.name, args.consent_by or "", owner=args.owner)
    print(f"registered photo avatar {info.name!r} (owner {args.owner!r})")
    return 0


def cmd_remove_photo(args: argparse.Namespace) -> int:
    """Withdraw a photo avatar: its files are deleted (consent revoked)."""
    from server.avatars import AvatarRegistry

    cfg = _config(args)
    AvatarRegistry(cfg.avatars.data_dir).remove_photo(args.name)
    print(f"removed photo avatar {args.name!r} and its files")
    return 0


def cmd_client(args: argparse.Namespace) -> int:
    """Headless WebRTC client (see server/client.py)."""
    from server import client

    return int(client.main(args) or 0)


def cmd_camera(args: argparse.Namespace) -> int:
    """A local stage: microphone -> avatar -> virtual camera (+ virtual microphone, recording)."""
    from server.pipeline.runner import load_models
    from server.stage.camera import CameraOptions, run_camera

    cfg = _config(args)
    opts = CameraOptions(
        mic=args.mic, mic_backend=args.mic_backend, mic_file=args.mic_file, camera=args.camera,
        camera_backend=args.camera_backend, no_camera=args.no_camera, avatar=args.avatar,
        virtual_mic=args.virtual_mic, virtual_mic_device=args.virtual_mic_device, record=args.record,
        seconds=args.seconds, stats=args.stats, quiet=args.quiet,
    )
    if opts.seconds is not None and opts.seconds <= 0:
        raise ConfigError(f"--seconds must be > 0, got {opts.seconds}")
    run_camera(cfg, opts, load_models)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train the viseme model (python -m engines.train)."""
    from engines import train

    return int(train.main(args.rest) or 0)


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate viseme models (python -m engines.evaluate)."""
    from engines import evaluate

    return int(evaluate.main(args.rest) or 0)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``avatar``."""
    p = argparse.ArgumentParser(prog="avatar", description="Real-time streaming avatar server")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", type=Path, default=None, help="TOML config (default: configs/default.toml)")
        sp.add_argument("--data-dir", type=Path, default=None, help="where photo avatars are stored")

    def model_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", default=None, help="viseme model: default, energy, or a .onnx path")
        sp.add_argument("--engine", default=None, choices=["auto", "tensorrt", "cuda", "onnxruntime"])

    sp = sub.add_parser("serve", help="start the server")
    common(sp)
    model_opts(sp)
    sp.add_argument("--host", default=None)
    sp.add_argument("--port", type=int, default=None)
    sp.add_argument("--record-stages", action="store_true", help="record every stage (WebM, no re-encode) into [stage] record_dir")
    sp.add_argument("--auth", default=None, choices=["auto", "required", "off"], help="access tokens (default [server] auth: auto)")
    sp.add_argument("--tls-cert", type=Path, default=None, help="HTTPS: certificate chain (PEM)")
    sp.add_argument("--tls-key", type=Path, default=None, help="HTTPS: private key (PEM)")
    sp.add_argument("--log-format", default=None, choices=["text", "json"],
                    help="log lines as text or one JSON object each (default [server] log_format: text)")
    sp.add_argument("--self-signed", action="store_true",
                    help="HTTPS with a self-signed certificate for this host's names and addresses (kept in the data dir)")
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("token", help="access tokens: avatar token create --role presenter|viewer|admin [--stage S] [--ttl S]")
    common(sp)
    tsub = sp.add_subparsers(dest="token_cmd", required=True)
    tc = tsub.add_parser("create", help="mint a signed token (printed alone on the last line)")
    common(tc)
    tc.add_argument("--role", required=True, choices=["presenter", "viewer", "admin"])
    tc.add_argument("--stage", default=None, help="a viewer token's stage (default: any stage)")
    tc.add_argument("--ttl", type=float, default=24 * 3600, help="lifetime, s (default 24 h)")
    tc.add_argument("--subject", default="", help="who it is for (kept in the token, for logs); a presenter's photo avatars belong to its subject (default: a fresh one per token)")
    tc.set_defaults(func=cmd_token_create)

    sp = sub.add_parser("render", help="render an audio file to an MP4 of the avatar")
    common(sp)
    model_opts(sp)
    sp.add_argument("input", type=Path)
    sp.add_argument("-o", "--output", type=Path, required=True)
    sp.add_argument("--avatar", default=None, help="avatar name (see `avatar avatars`)")
    sp.add_argument("--fps", type=float, default=None)
    sp.add_argument("--size", default=None, help="WxH, e.g. 512x512")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_render)

    sp = sub.add_parser("visemes", help="extract visemes from an audio file")
    common(sp)
    model_opts(sp)
    sp.add_argument("input", type=Path)
    sp.add_argument("--format", default="json", choices=["json", "rhubarb-json", "rhubarb-tsv"])
    sp.add_argument("-o", "--output", type=Path, default=None, help="output file (default: stdout)")
    sp.set_defaults(func=cmd_visemes)

    sp = sub.add_parser("avatars", help="list avatars (name, kind)")
    common(sp)
    sp.set_defaults(func=cmd_avatars)

    sp = sub.add_parser("add-photo", help="register a face photo as an avatar")
    common(sp)
    sp.add_argument("image", type=Path)
    sp.add_argument("--name", required=True)
    sp.add_argument("--consent-by", default=None, help="who consented to this likeness being animated (required)")
    sp.add_argument("--owner", default="operator",
                    help="who may use it: the subject of their presenter token (avatar token create --subject); "
                         "default 'operator', the presenter link printed at start (admins may use every photo)")
    sp.set_defaults(func=cmd_add_photo)

    sp = sub.add_parser("remove-photo", help="withdraw a photo avatar: its files are deleted (consent revoked)")
    common(sp)
    sp.add_argument("name")
    sp.set_defaults(func=cmd_remove_photo)

    sp = sub.add_parser("camera", help="local avatar: microphone -> virtual camera (+ virtual microphone), no browser")
    common(sp)
    model_opts(sp)
    sp.add_argument("--mic", default=None, metavar="DEVICE", help="microphone (PulseAudio source name or PortAudio device; default: the default input)")
    sp.add_argument("--mic-backend", default="auto", choices=["auto", "pulse", "portaudio"], help="how to capture the microphone (auto: PulseAudio/PipeWire when running, else PortAudio)")
    sp.add_argument("--mic-file", type=Path, default=None, metavar="AUDIO", help="play this audio file as the microphone, in real time (then silence)")
    sp.add_argument("--camera", default=None, metavar="DEVICE", help="virtual camera (/dev/videoN on Linux, 'OBS Virtual Camera'; default: the first found)")
    sp.add_argument("--camera-backend", default=None, help="pyvirtualcam backend (v4l2loopback, obs, unitycapture; default: any)")
    sp.add_argument("--no-camera", action="store_true", help="no virtual camera (with --record or --virtual-mic)")
    sp.add_argument("--avatar", default=None, help="avatar name (see `avatar avatars`)")
    sp.add_argument("--virtual-mic", action="store_true", help='send the voice, delayed to match the video, to the virtual microphone "Avatar microphone"')
    sp.add_argument("--virtual-mic-device", default=None, metavar="OUTPUT", help="PortAudio output for the voice (default: VB-Cable or BlackHole)")
    sp.add_argument("--record", type=Path, default=None, metavar="FILE.mp4", help="record what the camera and the virtual microphone emit")
    sp.add_argument("--seconds", type=float, default=None, help="stop after this many seconds of video")
    sp.add_argument("--stats", type=Path, default=None, metavar="FILE.json", help="write the final statistics here")
    sp.add_argument("--fps", type=float, default=None)
    sp.add_argument("--size", default=None, help="WxH, e.g. 640x480")
    sp.add_argument("-q", "--quiet", action="store_true", help="no status line")
    sp.set_defaults(func=cmd_camera)

    sp = sub.add_parser("client", help="headless WebRTC client playing a WAV as its microphone")
    try:
        from server.client import add_arguments

        add_arguments(sp)
    except ImportError:  # pragma: no cover
        pass
    sp.set_defaults(func=cmd_client)

    for name, func, helptext in (("train", cmd_train, "train the viseme model (engines.train)"), ("eval", cmd_eval, "evaluate viseme models (engines.evaluate)")):
        sp = sub.add_parser(name, help=helptext, add_help=False)
        sp.add_argument("rest", nargs=argparse.REMAINDER)
        sp.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``avatar`` console script."""
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "log_format", None) or "text", verbose=args.verbose)
    try:
        return args.func(args)
    except AvatarError as e:
        print(f"avatar: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
