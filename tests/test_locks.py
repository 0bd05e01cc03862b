"""requirements/*.lock: every pin exact and hashed, the locks agree, pyproject's ranges admit them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "requirements"
NO_DEPS = {"silero-vad": "6.2.3", "mediapipe": "0.10.21"}  # installed --no-deps, pinned outside pyproject


def read_lock(name: str) -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, sha256 hashes)} of ``requirements/<name>.lock``."""
    text = (LOCKS / f"{name}.lock").read_text()
    pins: dict[str, tuple[str, list[str]]] = {}
    for entry in re.split(r"\n(?=\S)", "\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))):
        if not entry.strip():
            continue
        m = re.match(r"([A-Za-z0-9._-]+)==(\S+)", entry)
        assert m, f"{name}.lock: not an exact pin: {entry.splitlines()[0]!r}"
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", entry)
        assert hashes, f"{name}.lock: {m.group(0)} has no sha256 hash (pip --require-hashes refuses it)"
        pins[canonicalize_name(m.group(1))] = (m.group(2), hashes)
    return pins


def test_every_pin_is_exact_and_hashed() -> None:
    for name in ("bootstrap", "serve", "dev"):
        assert len(read_lock(name)) >= 3, name


def test_locks_agree_and_nest() -> None:
    boot, serve, dev = read_lock("bootstrap"), read_lock("serve"), read_lock("dev")
    assert set(boot) == {"pip", "setuptools", "wheel"}
    for small, big, label in ((boot, serve, "bootstrap in serve"), (serve, dev, "serve in dev")):
        for pkg, (version, _) in small.items():
            assert pkg in big and big[pkg][0] == version, (label, pkg, version, big.get(pkg))
    assert dev["torch"][0].endswith("+cpu"), dev["torch"]  # the CPU build, not PyPI's CUDA one
    for pkg, version in NO_DEPS.items():
        assert serve[pkg][0] == version, (pkg, serve[pkg])


def test_pyproject_ranges_admit_the_locked_versions() -> None:
    """Every runtime dependency is in serve.lock and every extra's in dev.lock, at a version its
    range (an honest lower bound) allows; the build needs setuptools/wheel (--no-build-isolation)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    serve, dev = read_lock("serve"), read_lock("dev")
    groups = {"runtime": (project["project"]["dependencies"], serve), "photo": (project["project"]["optional-dependencies"]["photo"], serve)}
    for extra in ("train", "dev"):
        groups[extra] = (project["project"]["optional-dependencies"][extra], dev)
    for label, (reqs, lock) in groups.items():
        for spec in reqs:
            req = Requirement(spec)
            pkg = canonicalize_name(req.name)
            assert pkg in lock, f"{label}: {spec} is not in the lock; run make lock"
            version = Version(lock[pkg][0])
            # a local version label (+cpu) is the same release for ==X.Y.Z
            assert req.specifier.contains(version) or req.specifier.contains(version.public), (label, spec, version)
    for spec in project["build-system"]["requires"]:
        req = Requirement(spec)
        assert req.specifier.contains(Version(serve[canonicalize_name(req.name)][0])), spec
