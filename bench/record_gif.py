"""Record a short GIF (and a screenshot) of a live session in the web page, for the README.

    .venv/bin/python bench/record_gif.py [--seconds 5] [--gif docs/live-session.gif]
                                         [--screenshot docs/screenshot-live.png] [--audio FILE.wav]

Starts the real server on the private test network (re-running itself under tests/netns_run.sh:
WebRTC needs a non-loopback interface), opens the page in Debian's chromium with a fake
microphone playing speech (espeak-ng unless --audio is given), presses Start, takes a
screenshot every ~100 ms and assembles them with PIL into a looping GIF whose frame durations
are the real capture intervals. Needs root (or CAP_SYS_ADMIN) for the network namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
HOST = "198.18.0.1"
DEFAULT_TEXT = (
    "Hello! I am your avatar. When you talk, I talk with you.",
    "Watch my mouth open, close and round for every sound.",
)


def make_speech(path: Path, texts: tuple[str, ...] = DEFAULT_TEXT, rate_hz: int = 16_000) -> Path:
    """Write silence + espeak-ng sentences + silence as 16-bit PCM mono WAV at ``rate_hz``."""
    import soundfile as sf

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SystemExit("espeak-ng is not installed: pass --audio FILE.wav")
    parts = [np.zeros(int(0.5 * rate_hz), np.float32)]
    for i, text in enumerate(texts):
        raw = path.with_suffix(f".{i}.wav")
        subprocess.run([exe, "-v", "en-us", "-s", "155", "-w", str(raw), text], check=True)
        audio, sr = sf.read(str(raw), dtype="float32", always_2d=True)
        mono = audio.mean(axis=1)
        n_out = int(round(mono.size * rate_hz / sr))
        parts.append(np.interp(np.linspace(0, mono.size - 1, n_out), np.arange(mono.size), mono).astype(np.float32))
        parts.append(np.zeros(int(0.6 * rate_hz), np.float32))
    sf.write(str(path), np.concatenate(parts), rate_hz, subtype="PCM_16")
    return path


def free_port(host: str) -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def start_server(port: int, log: Path, data_dir: Path, timeout_s: float = 120.0) -> subprocess.Popen[bytes]:
    """``python -m server serve`` on HOST:port; returns once ``/healthz`` answers."""
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "serve", "--host", HOST, "--port", str(port), "--data-dir", str(data_dir)],
            cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=2) as r:
                if json.loads(r.read()).get("ok"):
                    return proc
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.3)
    stop_server(proc)
    raise SystemExit(f"server did not answer /healthz within {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def to_gif(frames: list[Image.Image], durations_ms: list[int], path: Path, width: int) -> int:
    """Scale ``frames`` to ``width`` px, quantize to one shared palette, save a looping GIF; bytes."""
    if not frames:
        raise ValueError("no frames to write")
    w0, h0 = frames[0].size
    size = (width, int(round(h0 * width / w0)))
    scaled = [f.convert("RGB").resize(size, Image.Resampling.LANCZOS) for f in frames]
    # one palette from a mosaic of a few frames keeps colours stable (no flicker) and the file small
    picks = scaled[:: max(1, len(scaled) // 12)][:12]
    mosaic = Image.new("RGB", (size[0], size[1] * len(picks)))
    for i, f in enumerate(picks):
        mosaic.paste(f, (0, i * size[1]))
    palette = mosaic.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    q = [f.quantize(palette=palette, dither=Image.Dither.NONE) for f in scaled]
    path.parent.mkdir(parents=True, exist_ok=True)
    q[0].save(path, save_all=True, append_images=q[1:], duration=durations_ms, loop=0, optimize=True, disposal=1)
    return path.stat().st_size


async def capture(ctx: Any, page: Any, args: argparse.Namespace) -> tuple[list[Image.Image], list[float]]:
    """Frames of the page every ~``args.interval`` s for ``args.seconds`` s; (frames, times s).

    ``screencast`` streams compositor frames over the DevTools protocol (smooth even on a busy
    machine) and keeps one per interval; ``screenshot`` calls page.screenshot in a loop.
    """
    clip = await page.locator("#stage").bounding_box() if args.clip == "stage" else None
    frames: list[Image.Image] = []
    stamps: list[float] = []
    if args.method == "screenshot":
        t_end = time.monotonic() + args.seconds
        while time.monotonic() < t_end:
            t = time.monotonic()
            png = await page.screenshot(clip=clip) if clip else await page.screenshot()
            frames.append(Image.open(io.BytesIO(png)).convert("RGB"))
            stamps.append(t)
            await asyncio.sleep(max(0.0, args.interval - (time.monotonic() - t)))
        return frames, stamps
    cdp = await ctx.new_cdp_session(page)
    raw: list[tuple[float, bytes]] = []

    async def on_frame(ev: dict[str, Any]) -> None:
        raw.append((float(ev["metadata"]["timestamp"]), base64.b64decode(ev["data"])))
        await cdp.send("Page.screencastFrameAck", {"sessionId": ev["sessionId"]})

    cdp.on("Page.screencastFrame", lambda ev: asyncio.ensure_future(on_frame(ev)))
    # downscaled in the browser before encoding: cheaper on a busy machine
    await cdp.send("Page.startScreencast", {"format": "jpeg", "quality": 90, "everyNthFrame": 1,
                                            "maxWidth": args.width, "maxHeight": 4 * args.width})
    await asyncio.sleep(args.seconds)
    await cdp.send("Page.stopScreencast")
    await asyncio.sleep(0.2)
    await cdp.detach()
    next_t = -1.0
    for t, data in sorted(raw):
        if t + 1e-3 < next_t:
            continue
        img = Image.open(io.BytesIO(data)).convert("RGB")
        if clip is not None:
            sx = img.width / args.viewport[0]  # screencast frames may be downscaled
            img = img.crop((int(clip["x"] * sx), int(clip["y"] * sx), int((clip["x"] + clip["width"]) * sx),
                            int((clip["y"] + clip["height"]) * sx)))
        frames.append(img)
        stamps.append(t)
        next_t = (next_t if next_t > 0 else t) + args.interval
    return frames, stamps


async def best_screenshot(page: Any, path: Path, tries: int) -> None:
    """Save the page screenshot (PNG) whose avatar mouth is the most open among ``tries`` shots.

    A README picture of a speaking avatar; openness is measured on the stage region with
    ``server.render.measure.mouth_openness``.
    """
    from server.render.measure import mouth_openness

    box = await page.locator("#stage").bounding_box()
    best: tuple[float, bytes] | None = None
    for _ in range(tries):
        png = await page.screenshot()
        rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        x, y, w, h = (int(round(v)) for v in (box["x"], box["y"], box["width"], box["height"]))
        score = float(mouth_openness(np.ascontiguousarray(rgb[y:y + h, x:x + w])))
        if best is None or score > best[0]:
            best = (score, png)
        await asyncio.sleep(0.05)
    assert best is not None
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(path.write_bytes, best[1])
    print(f"wrote {path} (mouth openness {best[0]:.2f}, best of {tries})")


async def record(args: argparse.Namespace) -> None:
    """Run the server, drive the page, write the screenshot and the GIF."""
    from playwright.async_api import async_playwright

    work = Path(tempfile.mkdtemp(prefix="record-gif-"))
    try:
        wav = Path(args.audio) if args.audio else make_speech(work / "speech.wav")
        port = free_port(HOST)
        origin = f"http://{HOST}:{port}"
        server = start_server(port, work / "server.log", work / "data")
        try:
            async with async_playwright() as pw:
                ctx = await pw.chromium.launch_persistent_context(
                    str(work / "profile"), executable_path=CHROMIUM,
                    viewport={"width": args.viewport[0], "height": args.viewport[1]},
                    color_scheme=args.color_scheme,
                    args=[
                        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        "--autoplay-policy=no-user-gesture-required", "--use-fake-ui-for-media-stream",
                        "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}",
                        f"--unsafely-treat-insecure-origin-as-secure={origin}",
                    ],
                )
                page = ctx.pages[0] if ctx.pages else await ctx.new_page()
                await page.goto(origin + "/")
                await page.wait_for_function("() => document.getElementById('avatar-select').value !== ''")
                if args.avatar:
                    await page.select_option("#avatar-select", args.avatar)
                await page.click("#btn-start")
                await page.wait_for_function("() => ['live', 'error'].includes(document.body.dataset.state)", timeout=30_000)
                state = await page.evaluate("document.body.dataset.state")
                if state != "live":
                    raise SystemExit(f"page did not go live: {await page.inner_text('#message')}")
                c = await page.evaluate("window.avatarClient")
                print(f"first frame {c['firstFrameAt'] - c['startedAt']:.0f} ms after Start")
                await asyncio.sleep(args.warmup)
                frames, stamps = await capture(ctx, page, args)
                if args.screenshot:
                    await best_screenshot(page, Path(args.screenshot), args.shot_tries)
                stats = (await page.evaluate("window.avatarClient"))["stats"]
                print("page stats:", json.dumps(stats))
                await page.click("#btn-stop")
                await ctx.close()
        finally:
            stop_server(server)
        durations = [int(round(1000 * (b - a))) for a, b in zip(stamps, stamps[1:], strict=False)]
        durations.append(int(round(1000 * args.interval)))
        size = to_gif(frames, durations, Path(args.gif), args.width)
        print(f"wrote {args.gif}: {len(frames)} frames, mean interval {np.mean(durations):.0f} ms, {size / 1e6:.2f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gif", default=str(ROOT / "docs" / "live-session.gif"))
    p.add_argument("--screenshot", default=str(ROOT / "docs" / "screenshot-live.png"), help="'' to skip")
    p.add_argument("--audio", help="WAV for the fake microphone (default: espeak-ng speech)")
    p.add_argument("--avatar", help="avatar name (default: the server's default)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of the GIF")
    p.add_argument("--interval", type=float, default=0.1, help="s between screenshots")
    p.add_argument("--warmup", type=float, default=1.5, help="s after going live before recording")
    p.add_argument("--clip", choices=("page", "stage"), default="page")
    p.add_argument("--shot-tries", type=int, default=30, help="screenshots to pick the most open mouth from")
    p.add_argument("--method", choices=("screencast", "screenshot"), default="screencast")
    p.add_argument("--width", type=int, default=720, help="GIF width in px")
    p.add_argument("--viewport", type=int, nargs=2, default=(1280, 860), metavar=("W", "H"))
    p.add_argument("--color-scheme", choices=("light", "dark"), default="light")
    args = p.parse_args()
    if os.environ.get("AVATAR_NETNS") != "1":
        # WebRTC needs a non-loopback interface: run inside the private test network
        os.execv(str(ROOT / "tests" / "netns_run.sh"), [str(ROOT / "tests" / "netns_run.sh"), sys.executable, *sys.argv])
    asyncio.run(record(args))


if __name__ == "__main__":
    main()
