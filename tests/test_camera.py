"""``avatar camera``: a local stage (microphone → pipeline → virtual camera + virtual microphone).

- A fake pyvirtualcam backend registered here receives the frames: count, size, format,
  timing on the video clock, and the mouth moving with the speech of ``--mic-file``.
- A private PulseAudio (tests/marionette.py NullAudio): speech played with ``paplay`` into its
  null sink is the microphone (the sink's monitor, captured by the command's ``parec``); the
  virtual microphone "Avatar microphone" is recorded back with ``parec`` and must be the speech
  delayed by about the delay the command reports. Unplugging the microphone mid-call, SIGINT,
  and what is left behind (pulse modules, pacat/parec processes, threads) are checked too.
- ``--mic-file`` + ``--record`` + ``--seconds``: an MP4 with video at the configured fps and
  the voice, whose sync is read back from the file.
- Missing or busy devices: exit status 2 and one line naming the device, no traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from tests.marionette import NullAudio

ROOT = Path(__file__).resolve().parent.parent
FPS = 30.0
SIZE = 256  # px; small frames keep the tests light on two cores (the bench runs 512x512)
RATE = 48_000
MIC_CAPTURE_MS = 20  # the command's parec --latency-msec (server/stage/local.py PulseMic)


# ------------------------------------------------------------------ helpers


class FakeCam:
    """A pyvirtualcam backend that keeps what it is sent (registered as "fake")."""

    instances: list[FakeCam] = []
    busy = False

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: str | None, **kw: Any) -> None:
        if FakeCam.busy:
            raise RuntimeError(f"could not open {device}: Device or resource busy")
        if device not in (None, "/dev/fake0"):
            raise RuntimeError(f"device {device} does not exist")
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self.frames: list[tuple[float, NDArray[np.uint8]]] = []  # (time.monotonic(), frame)
        self.closed = 0
        FakeCam.instances.append(self)

    def send(self, frame: NDArray[np.uint8]) -> None:
        self.frames.append((time.monotonic(), frame.copy()))

    def device(self) -> str:
        return "/dev/fake0"

    def native_fourcc(self) -> int | None:
        return self.fourcc

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def fake_backend() -> Iterator[type[FakeCam]]:
    import pyvirtualcam

    FakeCam.instances.clear()
    FakeCam.busy = False
    pyvirtualcam.register_backend("fake", FakeCam)
    try:
        yield FakeCam
    finally:
        pyvirtualcam.camera.BACKENDS.pop("fake", None)


@pytest.fixture
def pulse(tmp_path: Path) -> Iterator[NullAudio]:
    """A private PulseAudio with one null sink "null" (its monitor: the test microphone)."""
    srv = NullAudio(tmp_path)
    try:
        yield srv
    finally:
        srv.close()


def pulse_env(srv: NullAudio) -> dict[str, str]:
    return {**os.environ, "PULSE_SERVER": srv.address}


def pactl(srv: NullAudio, *args: str) -> str:
    out = subprocess.run(["pactl", *args], env=pulse_env(srv), capture_output=True, text=True, timeout=10, check=True)
    return out.stdout


def camera_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "server", "camera", "--size", f"{SIZE}x{SIZE}", "--fps", str(FPS), *args]


def run_camera_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(camera_cmd(*args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def speech_16k(path: Path) -> NDArray[np.float32]:
    import soundfile

    x, sr = soundfile.read(str(path), dtype="float32")
    assert sr == 16000
    return np.asarray(x, np.float32)


def speaking_at(speech: NDArray[np.float32], t: NDArray[np.float64], sr: int = 16000) -> NDArray[np.bool_]:
    """Whether the WAV is loud (speech, not a pause) around each time ``t`` (s)."""
    win = int(0.03 * sr)
    out = np.zeros(len(t), bool)
    for i, ti in enumerate(t):
        a = int(ti * sr) - win // 2
        seg = speech[max(a, 0): max(a + win, 0)]
        out[i] = seg.size > 0 and float(np.sqrt(np.mean(seg**2))) > 0.02
    return out


class PulseRecorder:
    """``parec`` of one source in a thread; ``start_t``: monotonic time of its first sample."""

    def __init__(self, srv: NullAudio, source: str) -> None:
        self.proc = subprocess.Popen(
            ["parec", "--raw", "--format=s16le", f"--rate={RATE}", "--channels=1", "--latency-msec=10", f"--device={source}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=pulse_env(srv),
        )
        self.chunks: list[bytes] = []
        self.start_t: float | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while data := os.read(fd, 960):
            if self.start_t is None:
                self.start_t = time.monotonic() - len(data) / 2 / RATE
            self.chunks.append(data)

    def stop(self) -> NDArray[np.float32]:
        self.proc.terminate()
        self.proc.wait(5)
        self._thread.join(5)
        return np.frombuffer(b"".join(self.chunks), np.int16).astype(np.float32) / 32768.0


def speech_lag_s(recorded: NDArray[np.float32], speech: NDArray[np.float32]) -> tuple[float, float]:
    """(s, normalised correlation): where ``speech`` (16 kHz) starts inside ``recorded`` (48 kHz)."""
    ref = cv2.resize(speech.reshape(1, -1), (len(speech) * 3, 1), interpolation=cv2.INTER_LINEAR).reshape(-1)
    n = len(recorded) + len(ref)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(recorded, size) * np.conj(np.fft.rfft(ref, size)), size)[: len(recorded)]
    k = int(np.argmax(corr))
    seg = recorded[k: k + len(ref)]
    norm = float(np.linalg.norm(seg) * np.linalg.norm(ref[: len(seg)])) or 1.0
    return k / RATE, float(corr[k] / norm)


def our_pulse_processes(srv: NullAudio) -> list[str]:
    """pacat/parec processes talking to this private server (other than the test's own)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            env = (d / "environ").read_bytes()
        except OSError:
            continue
        if cmd and Path(cmd[0].decode(errors="replace")).name in ("pacat", "parec") and srv.address.encode() in env:
            found.append(f"{d.name}: {b' '.join(cmd).decode(errors='replace')}")
    return found


def check_no_leftovers(srv: NullAudio) -> None:
    modules = pactl(srv, "list", "short", "modules")
    assert "avatar_mic" not in modules, f"the virtual microphone's module was left loaded:\n{modules}"
    assert "avatar_mic" not in pactl(srv, "list", "short", "sinks")
    assert our_pulse_processes(srv) == [], our_pulse_processes(srv)


class CameraProc:
    """``avatar camera`` as a subprocess, its stderr collected line by line in a thread."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(camera_cmd(*args), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def err(self) -> str:
        return "".join(self.lines)

    def wait_line(self, text: str, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"no {text!r} from avatar camera (status {self.proc.poll()}):\n{self.err[-3000:]}")
            time.sleep(0.05)

    def finish(self, timeout: float = 60.0) -> int:
        try:
            rc = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._thread.join(5)
        return rc


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one error line a failed command printed (and no traceback)."""
    assert proc.returncode == 2, f"exit status {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("avatar: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


# ------------------------------------------------------------------ the fake camera


def test_fake_camera_gets_frames_on_the_clock_and_the_mouth_moves(fake_backend: type[FakeCam], speech_wav: Path, tmp_path: Path) -> None:
    from server.cli import main
    from server.render.measure import mouth_openness

    seconds = 6.0
    stats_path = tmp_path / "stats.json"
    threads_before = {t.ident for t in threading.enumerate()}
    rc = main(["camera", "--mic-file", str(speech_wav), "--camera-backend", "fake", "--avatar", "ava", "--seconds", str(seconds),
               "--size", f"{SIZE}x{SIZE}", "--fps", str(FPS), "--stats", str(stats_path), "-q"])
    assert rc == 0
    stats = json.loads(stats_path.read_text())
    assert len(fake_backend.instances) == 1
    cam = fake_backend.instances[0]
    assert cam.closed == 1, "the camera was not closed exactly once"
    import pyvirtualcam.util

    assert pyvirtualcam.util.decode_fourcc(cam.fourcc) == "I420"
    assert (cam.width, cam.height, cam.fps) == (SIZE, SIZE, FPS)
    n = len(cam.frames)
    assert abs(n - seconds * FPS) <= 0.05 * seconds * FPS, f"{n} frames in {seconds} s at {FPS} fps"
    assert all(f.dtype == np.uint8 and f.size == SIZE * SIZE * 3 // 2 for _, f in cam.frames)
    t = np.array([ts for ts, _ in cam.frames])
    gaps = np.diff(t)
    rate = (n - 1) / (t[-1] - t[0])
    print(f"\nfake camera: {n} frames, {rate:.2f} fps, gap p50 {np.median(gaps) * 1000:.1f} ms max {gaps.max() * 1000:.1f} ms; "
          f"latency {stats['latency_ms']}, voice delay {stats['voice_delay_ms']} ms")
    assert abs(rate - FPS) < 1.5, rate
    assert abs(float(np.median(gaps)) - 1 / FPS) < 0.004, gaps
    assert gaps.max() < 3.5 / FPS, f"a {gaps.max() * 1000:.0f} ms stall"
    assert stats["emitted_frames"] == n and stats["camera"]["frames"] == n

    # the mouth follows the speech: the frame sent at t shows the audio heard latency earlier
    lat = stats["latency_ms"]["p50"] / 1000.0
    assert 0.0 < lat < 0.3, stats["latency_ms"]
    audio_t = t - t[0] + 0.02 - lat  # the first frame follows the file's first 20 ms frame
    opens = np.array([mouth_openness(np.asarray(cv2.cvtColor(f.reshape(SIZE * 3 // 2, SIZE), cv2.COLOR_YUV2RGB_I420), np.uint8), "ava") for _, f in cam.frames])
    speaking = speaking_at(speech_16k(speech_wav), audio_t)
    print(f"mouth: max {opens.max():.2f}, mean {opens[speaking].mean():.3f} speaking vs {opens[~speaking].mean():.3f} in pauses")
    assert speaking.sum() > 40 and (~speaking).sum() > 40
    assert opens.max() > 0.3, "the mouth never opened"
    assert opens[speaking].mean() > opens[~speaking].mean() + 0.08
    assert opens[audio_t < 0.4].max() < 0.05, "the mouth moved in the file's leading silence"

    left = [th.name for th in threading.enumerate() if th.ident not in threads_before and th.is_alive()]
    assert left == [], f"threads left running: {left}"


def test_busy_and_missing_virtual_camera_are_named(fake_backend: type[FakeCam], speech_wav: Path) -> None:
    from server.errors import DeviceError
    from server.stage.camera import VirtualCamera

    fake_backend.busy = True
    with pytest.raises(DeviceError, match=r"'/dev/fake0' is busy"):
        VirtualCamera(SIZE, SIZE, FPS, "/dev/fake0", "fake")
    fake_backend.busy = False
    with pytest.raises(DeviceError, match=r"no virtual camera '/dev/video7'.*does not exist.*v4l2loopback"):
        VirtualCamera(SIZE, SIZE, FPS, "/dev/video7", "fake")
    with pytest.raises(DeviceError, match=r"unknown virtual camera backend 'nope'"):
        VirtualCamera(SIZE, SIZE, FPS, None, "nope")


def test_no_virtual_camera_device_gives_one_clear_line(speech_wav: Path) -> None:
    # this machine has no v4l2loopback: the real backend finds no device
    line = error_line(run_camera_cli(["--mic-file", str(speech_wav), "--camera", "/dev/video63", "--seconds", "1"], timeout=60))
    assert "/dev/video63" in line and "v4l2loopback" in line and "OBS" in line, line
    line = error_line(run_camera_cli(["--mic-file", str(speech_wav), "--seconds", "1"], timeout=60))
    assert "no virtual camera" in line and "modprobe v4l2loopback" in line, line


# ------------------------------------------------------------------ recording


def test_mic_file_record_seconds_make_an_mp4_in_sync(speech_wav: Path, tmp_path: Path) -> None:
    from server.stage.sync import read_recording, utterance_offsets

    out = tmp_path / "call.mp4"
    stats_path = tmp_path / "stats.json"
    seconds = 5.0
    proc = run_camera_cli(["--mic-file", str(speech_wav), "--record", str(out), "--seconds", str(seconds), "--avatar", "ava",
                           "--stats", str(stats_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "recording to" in proc.stderr and "only" in proc.stderr, "a missing camera is not said when recording"
    stats = json.loads(stats_path.read_text())
    rec = read_recording(out, "ava")
    print(f"\nrecording: {len(rec.video_t)} frames at {rec.fps:.2f} fps, {len(rec.audio) / rec.rate:.2f} s of audio; {stats['record']}")
    assert rec.size == (SIZE, SIZE)
    assert abs(rec.fps - FPS) < 1.5, rec.fps
    assert abs(len(rec.video_t) - seconds * FPS) <= 0.05 * seconds * FPS
    assert abs(len(rec.audio) / rec.rate - seconds) < 0.15
    speech = speech_16k(speech_wav)
    lag, corr = speech_lag_s(rec.audio * 1.0, speech)
    print(f"voice in the file: speech starts at {lag * 1000:.0f} ms (correlation {corr:.2f}); delay reported {stats['voice_delay_ms']} ms")
    assert corr > 0.5, "the recorded voice is not the speech"
    assert abs(lag - stats["voice_delay_ms"] / 1000.0) < 0.04, (lag, stats["voice_delay_ms"])
    # per utterance, mouth onset − speech onset (server/sync.py), against avatar render of the
    # same speech (in sync by construction): EBU R37's window is audio 40 ms early .. 60 ms late
    from server.config import load_config
    from server.offline import render_file
    from server.pipeline.runner import load_models

    cfg = load_config(None, {"video": {"width": SIZE, "height": SIZE, "fps": FPS}})
    ref_mp4 = tmp_path / "render.mp4"
    render_file(speech_wav, ref_mp4, cfg, load_models(cfg), "ava", progress=False)
    live = utterance_offsets(rec)
    ref = utterance_offsets(read_recording(ref_mp4, "ava"))
    print(f"mouth onset - speech onset: camera {[round(o * 1000) for _, o in live]} ms, render {[round(o * 1000) for _, o in ref]} ms")
    assert len(live) == 2 and len(ref) == 2, (live, ref)  # the WAV's two sentences
    diff = float(np.median([o for _, o in live]) - np.median([o for _, o in ref]))
    assert -0.06 < diff < 0.04, f"the camera's voice is {diff * 1000:+.0f} ms off the render's sync"


# ------------------------------------------------------------------ PulseAudio: microphone and virtual microphone


def wait_for(pred: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_virtual_microphone_carries_the_delayed_speech(pulse: NullAudio, speech_wav: Path, tmp_path: Path) -> None:
    env = pulse_env(pulse)
    stats_path = tmp_path / "stats.json"
    cam = CameraProc(["--mic", "null.monitor", "--virtual-mic", "--no-camera", "--seconds", "11", "--stats", str(stats_path)], env)
    try:
        cam.wait_line("avatar camera: live")
        assert "avatar_mic" in pactl(pulse, "list", "short", "sinks")
        desc = pactl(pulse, "list", "sinks")
        assert 'device.description = "Avatar microphone"' in desc, desc[-2000:]
        time.sleep(3.5)  # pacat plays nothing for its first ~2 s on a fresh sink (frames are dropped meanwhile; margin for a busy machine)
        mic_rec = PulseRecorder(pulse, "null.monitor")
        vmic_rec = PulseRecorder(pulse, "avatar_mic.monitor")
        time.sleep(0.3)
        subprocess.run(["paplay", "--device=null", str(speech_wav)], env=env, check=True, timeout=30)
        time.sleep(1.0)
        mic = mic_rec.stop()
        vmic = vmic_rec.stop()
    finally:
        rc = cam.finish()
    assert rc == 0, cam.err[-3000:]
    stats = json.loads(stats_path.read_text())
    speech = speech_16k(speech_wav)
    assert mic_rec.start_t is not None and vmic_rec.start_t is not None
    lag_mic, c_mic = speech_lag_s(mic, speech)
    lag_vmic, c_vmic = speech_lag_s(vmic, speech)
    measured = (vmic_rec.start_t + lag_vmic) - (mic_rec.start_t + lag_mic)
    # the voice should be heard with the frame that shows it: the video's latency after the
    # command read it, which is its parec's capture latency after the microphone had it
    expected = (MIC_CAPTURE_MS + stats["latency_ms"]["p50"]) / 1000.0
    print(f"\nvirtual microphone: speech {measured * 1000:.0f} ms after the microphone's (correlation {c_mic:.2f} / {c_vmic:.2f}); "
          f"expected {expected * 1000:.0f} ms (capture {MIC_CAPTURE_MS} ms + video latency {stats['latency_ms']}); voice delay "
          f"{stats['voice_delay_ms']} ms + pacat {stats['virtual_mic']['latency_ms']} ms; {stats['virtual_mic']}")
    # 1.00 when this test runs alone; 0.5-0.6 after other tests of this module (not understood yet:
    # the delay below is right either way); silence or noise would be ~0
    assert c_mic > 0.8 and c_vmic > 0.4, "the virtual microphone does not carry the speech"
    assert stats["mic"]["state"] == "live" and stats["mic"]["losses"] == 0
    # a backlog in pacat's pipe is shed in the pauses; a voiced frame that finds the pipe full is
    # dropped (never delayed): rare, on a busy machine
    assert stats["virtual_mic"]["written"] > 6 / 0.02 and stats["virtual_mic"]["dropped"] <= 3, stats["virtual_mic"]
    assert abs(measured - expected) < 0.05, (measured, expected)
    check_no_leftovers(pulse)


def test_microphone_errors_name_the_device(pulse: NullAudio, speech_wav: Path) -> None:
    env = pulse_env(pulse)
    line = error_line(run_camera_cli(["--mic", "no_such_source", "--no-camera", "--virtual-mic", "--seconds", "1"], env=env, timeout=60))
    assert "no microphone 'no_such_source'" in line and "null.monitor" in line, line
    gone = {**env, "PULSE_SERVER": "unix:/nonexistent/pulse"}
    line = error_line(run_camera_cli(["--mic-file", str(speech_wav), "--no-camera", "--virtual-mic", "--seconds", "1"], env=gone, timeout=60))
    assert "PulseAudio" in line and "virtual microphone" in line, line
    line = error_line(run_camera_cli(["--mic-backend", "pulse", "--no-camera", "--virtual-mic", "--seconds", "1"], env=gone, timeout=60))
    assert "pactl info" in line, line
    line = error_line(run_camera_cli(["--mic-file", str(speech_wav) + ".missing", "--no-camera", "--virtual-mic"], env=env, timeout=60))
    assert ".missing" in line, line
    line = error_line(run_camera_cli(["--mic-backend", "portaudio", "--mic", "Nonesuch USB", "--no-camera", "--virtual-mic"], env=env, timeout=60))
    assert "no usable microphone 'Nonesuch USB'" in line, line  # PortAudio here sees no sound card
    check_no_leftovers(pulse)


def test_microphone_unplugged_mid_call_keeps_the_avatar_idling(pulse: NullAudio, tmp_path: Path) -> None:
    index = pactl(pulse, "load-module", "module-null-sink", "sink_name=usbmic").strip()
    stats_path = tmp_path / "stats.json"
    out = tmp_path / "call.mp4"
    seconds = 9  # room for the unplug to be noticed on a busy machine (at most MIC_SILENT_TIMEOUT_S after it)
    cam = CameraProc(["--mic", "usbmic.monitor", "--no-camera", "--record", str(out), "--seconds", str(seconds), "--stats", str(stats_path)], pulse_env(pulse))
    try:
        cam.wait_line("avatar camera: live")
        time.sleep(1.5)
        pactl(pulse, "unload-module", index)
    finally:
        rc = cam.finish()
    err = cam.err
    assert rc == 0, err[-3000:]
    assert "microphone 'usbmic.monitor' was disconnected" in err, err[-3000:]
    assert "Traceback" not in err
    stats = json.loads(stats_path.read_text())
    print(f"\nafter the unplug: {stats['emitted_frames']} frames, gap {stats['frame_gap_ms']}, mic {stats['mic']}")
    assert stats["mic"]["losses"] == 1 and stats["mic"]["state"].startswith("lost")
    assert abs(stats["emitted_frames"] - seconds * FPS) <= 0.05 * seconds * FPS, "the camera froze when the microphone went"
    assert stats["frame_gap_ms"]["max"] < 120
    assert our_pulse_processes(pulse) == []


def test_sigint_stops_cleanly(pulse: NullAudio, speech_wav: Path, tmp_path: Path) -> None:
    from server.stage.sync import read_recording

    out = tmp_path / "call.mp4"
    stats_path = tmp_path / "stats.json"
    cam = CameraProc(["--mic", "null.monitor", "--virtual-mic", "--no-camera", "--record", str(out), "--stats", str(stats_path)], pulse_env(pulse))
    try:
        cam.wait_line("avatar camera: live")
        time.sleep(2.0)
        cam.proc.send_signal(signal.SIGINT)
    finally:
        rc = cam.finish(20)
    assert rc == 0, f"exit status {rc} after SIGINT\n{cam.err[-3000:]}"
    assert "Traceback" not in cam.err, cam.err[-3000:]
    stats = json.loads(stats_path.read_text())
    rec = read_recording(out, measure_mouth=False)
    assert len(rec.video_t) >= 1.5 * FPS and len(rec.video_t) == stats["record"]["video_frames"], stats["record"]
    assert len(rec.audio) > 1.5 * rec.rate
    check_no_leftovers(pulse)


# ------------------------------------------------------------------ live controls


async def test_local_stage_switches_avatar_and_emotion_live(speech_wav: Path) -> None:
    import asyncio

    from server.clock import MonotonicClock
    from server.config import load_config
    from server.errors import AvatarNotFound
    from server.pipeline.runner import load_models
    from server.stage.local import FileMic, LocalStage

    cfg = load_config(None, {"video": {"width": SIZE, "height": SIZE}})
    clock = MonotonicClock()
    stage = LocalStage(cfg, load_models(cfg), clock, FileMic(speech_wav, clock), "ava")
    try:
        await stage.start()
        frames = stage.frames()
        first, _ = await anext(frames)
        assert first.shape == (SIZE * 3 // 2, SIZE)
        await stage.set_avatar("leo")
        await stage.set_emotion("happy")
        with pytest.raises(ValueError, match="'giddy'"):
            await stage.set_emotion("giddy")
        with pytest.raises(AvatarNotFound, match="nobody"):
            await stage.set_avatar("nobody")
        for _ in range(45):
            await anext(frames)
        await frames.aclose()
        stats = stage.stats()
        assert stats["avatar"] == "leo" and stats["emotion"] == "happy"
        assert stage.pipeline is not None and stage.pipeline.renderer is stage._renderers["leo"]
        assert stats["frames"] == 46 and stats["mic"]["state"] == "live"
        assert {"ava", "leo", "kofi", "mei"} <= set(stage.avatar_names())
    finally:
        await stage.close()
    assert stage._tasks == set(), "tasks left after close"
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("local-stage")] == []


class StubStage:
    """What CameraRun's key handler calls, recorded."""

    def __init__(self) -> None:
        self.avatar = "ava"
        self.calls: list[tuple[str, str]] = []

    def avatar_names(self) -> list[str]:
        return ["ava", "leo", "fox"]

    async def set_emotion(self, emotion: str) -> None:
        self.calls.append(("emotion", emotion))

    async def set_avatar(self, name: str) -> None:
        self.calls.append(("avatar", name))
        self.avatar = name


async def test_keys_drive_emotions_avatars_and_quit() -> None:
    import asyncio
    import io

    from server.clock import MonotonicClock
    from server.stage.camera import CameraOptions, CameraRun

    stage = StubStage()
    run = CameraRun(CameraOptions(), stage, None, None, None, MonotonicClock(), io.StringIO())  # type: ignore[arg-type]
    for key, want in (("2", ("emotion", "happy")), ("0", ("emotion", "auto")), ("a", ("avatar", "leo")),
                      ("a", ("avatar", "fox")), ("a", ("avatar", "ava")), ("A", ("avatar", "fox"))):
        run._on_key(key)
        await asyncio.sleep(0.01)
        assert stage.calls[-1] == want, (key, stage.calls)
    run._on_key("9")  # not a key: nothing happens
    await asyncio.sleep(0.01)
    assert len(stage.calls) == 6
    assert not run.stop.is_set()
    run._on_key("q")
    assert run.stop.is_set()


def test_status_line_shows_fps_latency_and_mic_level() -> None:
    from server.stage.camera import level_bar, status_line

    stats = {"fps": 29.97, "latency_ms": {"p50": 61.4}, "voice_delay_ms": 31.0, "avatar": "mei", "emotion": "sad",
             "mic": {"state": "live", "dbfs": -30.0}}
    line = status_line(stats)
    assert "30.0 fps" in line and "latency 61 ms" in line and "voice +31 ms" in line and "#####....." in line, line
    assert "mei" in line and "sad" in line
    stats["mic"] = {"state": "lost: microphone 'usb' was disconnected", "dbfs": -120.0}
    assert "[lost: microphone 'usb' was disconnected]" in status_line(stats)
    assert level_bar(0.0) == "#" * 10 and level_bar(-90.0) == "." * 10


def test_terminal_keys_switch_live_and_the_terminal_is_restored(speech_wav: Path, tmp_path: Path) -> None:
    import pty
    import select
    import termios

    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    stats_path = tmp_path / "stats.json"
    proc = subprocess.Popen(camera_cmd("--mic-file", str(speech_wav), "--no-camera", "--record", str(tmp_path / "k.mp4"),
                                       "--stats", str(stats_path)), cwd=ROOT, stdin=slave, stdout=slave, stderr=slave)
    out = b""

    def pump(seconds: float, until: bytes | None = None) -> None:
        nonlocal out
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until and until in out):
            if select.select([master], [], [], 0.05)[0]:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    return

    try:
        pump(60, b"keys: 1=neutral")
        assert b"keys: 1=neutral" in out, out[-2000:]
        os.write(master, b"2")
        pump(1.5)
        os.write(master, b"a")
        pump(2.0)
        assert b"| leo | happy" in out, out[-2000:]
        os.write(master, b"q")
        assert proc.wait(20) == 0, out[-3000:]
        pump(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        after = termios.tcgetattr(slave)
        os.close(master)
        os.close(slave)
    assert after == before, "the terminal was left in cbreak mode"
    stats = json.loads(stats_path.read_text())
    assert (stats["avatar"], stats["emotion"]) == ("leo", "happy")
    assert b"Traceback" not in out


def test_camera_lost_mid_call_names_it_and_closes_everything(fake_backend: type[FakeCam], speech_wav: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from server.cli import main

    def broken_send(self: FakeCam, frame: NDArray[np.uint8]) -> None:
        if len(self.frames) >= 40:
            raise OSError(19, "No such device")
        self.frames.append((time.monotonic(), frame.copy()))

    monkeypatch.setattr(fake_backend, "send", broken_send)
    threads_before = {t.ident for t in threading.enumerate()}
    out = tmp_path / "call.mp4"
    rc = main(["camera", "--mic-file", str(speech_wav), "--camera-backend", "fake", "--record", str(out), "--seconds", "5",
               "--size", f"{SIZE}x{SIZE}", "-q"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "avatar: error: virtual camera /dev/fake0 failed" in err and "No such device" in err, err
    assert fake_backend.instances[0].closed == 1
    from server.stage.sync import read_recording

    assert 38 <= len(read_recording(out, measure_mouth=False).video_t) <= 41, "the recording was not finished"
    left = [th.name for th in threading.enumerate() if th.ident not in threads_before and th.is_alive()]
    assert left == [], f"threads left running: {left}"


def test_the_camera_carries_the_disclosure_badge_when_configured(speech_wav: Path) -> None:
    from server.clock import MonotonicClock
    from server.config import load_config
    from server.pipeline.runner import load_models
    from server.render.disclosure import DisclosedRenderer
    from server.stage.local import FileMic, LocalStage

    for mode, badged in (("always", True), ("photo", False), ("off", False)):
        cfg = load_config(None, {"video": {"width": SIZE, "height": SIZE, "disclosure": mode}})
        clock = MonotonicClock()
        stage = LocalStage(cfg, load_models(cfg), clock, FileMic(speech_wav, clock), "ava")
        try:
            assert isinstance(stage._renderer_for("ava"), DisclosedRenderer) == badged, mode
        finally:
            stage.executor.shutdown()
