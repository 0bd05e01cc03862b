"""Keeping the frame rate under overload: the guard's decisions, and a live session acting on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from server.clock import VirtualClock
from server.config import load_config
from server.errors import ConfigError
from server.media.adapt import FrameRateGuard, scaled_size

FPS = 30.0
DT = 1.0 / FPS


def feed(g: FrameRateGuard, t0: float, seconds: float, late_s: float = 0.0, skip_every: int = 0) -> tuple[float, list[float]]:
    """Ticks at 30 fps from ``t0`` for ``seconds``: each ``late_s`` late, one tick skipped every
    ``skip_every`` ticks (0: never). Returns (end time, times the scale changed)."""
    changes: list[float] = []
    n = round(seconds * FPS)
    for i in range(n):
        t = t0 + i * DT
        skipped = 1 if skip_every and i % skip_every == skip_every - 1 else 0
        if g.tick(t, late_s, skipped):
            changes.append(t)
    return t0 + n * DT, changes


def test_scaled_size_rounds_to_even_pixels() -> None:
    assert scaled_size(512, 512, 0.75) == (384, 384)
    assert scaled_size(640, 480, 0.7) == (448, 336)
    assert scaled_size(510, 290, 0.5) == (256, 144)  # 255 and 145 px → a nearest even side (I420)
    assert scaled_size(512, 512, 1.0) == (512, 512)
    assert scaled_size(100, 100, 0.25) == (64, 64)  # never below 64 px
    with pytest.raises(ValueError, match="scale must be in"):
        scaled_size(512, 512, 0.0)


def test_on_time_ticks_keep_the_full_size() -> None:
    g = FrameRateGuard(FPS, 0.75)
    # on time, with the odd late tick (a GC pause, a keyframe)
    _, changes = feed(g, 0.0, 30.0, late_s=0.0)
    assert changes == [] and g.scale == 1.0
    for i in range(300):
        assert not g.tick(30.0 + i * DT, 0.03 if i % 5 == 0 else -0.01)
    assert g.scale == 1.0 and g.downs == 0 and g.late_ticks == 60


def test_skipped_ticks_step_down_within_a_second() -> None:
    g = FrameRateGuard(FPS, 0.75)
    t, _ = feed(g, 0.0, 2.0)  # past the start-up grace
    _, changes = feed(g, t, 2.0, late_s=0.05, skip_every=5)
    assert changes and changes[0] - t < 1.0, changes
    assert g.scale == 0.75 and g.downs == 1


def test_mostly_late_ticks_step_down_but_a_few_do_not() -> None:
    g = FrameRateGuard(FPS, 0.75)
    t, _ = feed(g, 0.0, 2.0)
    _, changes = feed(g, t, 3.0, late_s=0.4 * DT)  # late, but by less than half a frame
    assert changes == []
    g2 = FrameRateGuard(FPS, 0.75)
    t, _ = feed(g2, 0.0, 2.0)
    _, changes = feed(g2, t, 2.0, late_s=0.6 * DT)  # every tick over half a frame late
    assert len(changes) == 1 and g2.scale == 0.75


def test_start_up_is_not_judged() -> None:
    g = FrameRateGuard(FPS, 0.75, grace_s=1.5)
    _, changes = feed(g, 10.0, 1.4, late_s=0.2, skip_every=2)  # connection set-up, first keyframe
    assert changes == [] and g.scale == 1.0


def test_full_size_returns_after_a_calm_spell_and_backs_off_when_overload_returns() -> None:
    g = FrameRateGuard(FPS, 0.75, up_after_s=10.0, max_up_after_s=40.0)
    t, _ = feed(g, 0.0, 2.0)
    t, ch = feed(g, t, 1.0, skip_every=3)
    assert g.scale == 0.75 and len(ch) == 1
    calm_from = t  # still overloaded at the small size until here (each time restarts the wait)
    t, ch = feed(g, t, 12.0)  # calm at the small size
    assert g.scale == 1.0 and g.ups == 1
    assert 9.6 <= ch[0] - calm_from <= 10.0 + DT
    # overload again 3 s after coming back: down, and the next try waits twice as long
    t, _ = feed(g, t, 3.0)
    t, ch = feed(g, t, 1.0, skip_every=3)
    assert g.scale == 0.75 and g.up_after_s == 20.0
    t, ch = feed(g, t, 15.0)
    assert g.scale == 0.75  # not yet
    t, ch = feed(g, t, 6.0)
    assert g.scale == 1.0 and g.ups == 2
    # the doubling stops at the ceiling, and a long calm spell at full size resets it
    for _ in range(3):
        t, _ = feed(g, t, 1.0)
        t, _ = feed(g, t, 1.0, skip_every=3)
        t, _ = feed(g, t, g.up_after_s + 1.0)
    assert g.up_after_s == 40.0
    t, _ = feed(g, t, 45.0)
    t, _ = feed(g, t, 1.0, skip_every=3)
    assert g.scale == 0.75 and g.up_after_s == 10.0


def test_overload_at_the_small_size_restarts_the_wait() -> None:
    g = FrameRateGuard(FPS, 0.5, up_after_s=5.0)
    t, _ = feed(g, 0.0, 2.0)
    t, _ = feed(g, t, 1.0, skip_every=3)
    assert g.scale == 0.5
    t, _ = feed(g, t, 4.0)
    t, _ = feed(g, t, 1.0, skip_every=3)  # still overloaded at half size
    t, ch = feed(g, t, 4.5)
    assert ch == [] and g.scale == 0.5
    _, ch = feed(g, t, 1.0)
    assert ch and g.scale == 1.0


def test_scale_one_never_adapts() -> None:
    g = FrameRateGuard(FPS, 1.0)
    _, changes = feed(g, 0.0, 5.0, late_s=0.1, skip_every=2)
    assert changes == [] and g.scale == 1.0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"fps": 0.0, "scale": 0.75}, "fps must be in 1..240, got 0.0"),
        ({"fps": 30.0, "scale": 1.5}, "scale must be in (0, 1], got 1.5"),
        ({"fps": 30.0, "scale": 0.75, "skips_down": 0}, "skips_down must be >= 1, got 0"),
        ({"fps": 30.0, "scale": 0.75, "up_after_s": 50.0, "max_up_after_s": 20.0}, "up_after_s <= max_up_after_s"),
    ],
)
def test_guard_errors_name_the_value(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        FrameRateGuard(**kwargs)


def test_config_validates_adapt_keys(tmp_path: Path) -> None:
    cfg = load_config()
    assert cfg.video.adapt is True and cfg.video.adapt_scale == 0.75
    p = tmp_path / "c.toml"
    p.write_text("[video]\nadapt_scale = 0.1\n")
    with pytest.raises(ConfigError, match=r"video\.adapt_scale must be in 0\.25\.\.1.*got 0\.1"):
        load_config(p)
    p.write_text('[video]\nadapt = "yes"\n')
    with pytest.raises(ConfigError, match=r"video\.adapt must be true or false, got 'yes'"):
        load_config(p)


# ----------------------------------------------------------------------------- a real session


async def _offer_sdp() -> tuple[Any, str]:
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction="sendonly")
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


class FailingSmallRegistry:
    """A fake avatar registry (wrapping the real one) that cannot build renderers below 512 px."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def default_name(self) -> str:
        return str(self.real.default_name())

    def get(self, name: str) -> Any:
        return self.real.get(name)

    def create(self, name: str, size: tuple[int, int]) -> Any:
        if size[0] < 512:
            raise RuntimeError(f"no {size} renderer")
        return self.real.create(name, size)


async def test_session_keeps_running_when_the_small_renderer_fails(tmp_path: Path) -> None:
    from server.pipeline.runner import load_models
    from server.session import Session

    cfg = load_config(overrides={"avatars": {"data_dir": str(tmp_path / "d")}})
    models = load_models(cfg)
    models.registry = FailingSmallRegistry(models.registry)
    clock = VirtualClock(0.0)

    async def send(msg: dict[str, Any]) -> None:
        pass

    session = Session("f", cfg, models, clock, 0, send)
    offerer, sdp = await _offer_sdp()
    try:
        await session.handle_offer(sdp, None)
        assert session.video is not None
        for i in range(120):
            clock.advance_to(clock.now() + (0.1 if i >= 60 else 0.0))
            f = await session.video.recv()
            assert (f.width, f.height) == (512, 512)
            if session._rescaling is not None:
                await session._rescaling
        assert not session.closed and session.scale == 1.0 and session.guard.reduced == 1.0
        assert session.stats()["adapt"]["downs"] == 1  # the guard asked once; its counters are kept
    finally:
        await session.close()
        await offerer.close()


@pytest.mark.parametrize("adapt", [True, False])
async def test_session_renders_smaller_while_overloaded_then_full_again(adapt: bool, tmp_path: Path) -> None:
    """A live session's video track driven on a virtual clock: ticks that start 100 ms late
    (the machine cannot keep up) make the session render 384x384; on-time ticks bring back
    512x512 after the calm spell. With ``adapt = false`` it stays at 512x512 and skips ticks."""
    from server.pipeline.runner import load_models
    from server.session import Session

    cfg = load_config(overrides={"video": {"adapt": adapt}, "avatars": {"data_dir": str(tmp_path / "d")}})
    clock = VirtualClock(100.0)
    events: list[dict[str, Any]] = []

    async def send(msg: dict[str, Any]) -> None:
        events.append(msg)

    session = Session("t", cfg, load_models(cfg), clock, 0, send)
    offerer, sdp = await _offer_sdp()
    try:
        await session.handle_offer(sdp, None)
        assert session.video is not None
        sizes: list[tuple[float, int, int]] = []

        async def frame(late: float) -> None:
            assert session.video is not None
            clock.advance_to(clock.now() + late)
            f = await session.video.recv()
            sizes.append((clock.now(), f.width, f.height))

        for _ in range(60):  # 2 s on time: past the start-up grace
            await frame(0.0)
        for _ in range(30):  # overloaded: every tick starts 100 ms late (3 ticks skipped each time)
            await frame(0.1)
            if session._rescaling is not None:
                await session._rescaling  # the small renderer is built off the loop; wait for it here
        stats = session.stats()
        calm_from = clock.now()
        if adapt:
            assert session.scale == 0.75 and stats["scale"] == 0.75 and stats["adapt"]["downs"] == 1
            assert sizes[-1][1:] == (384, 384), sizes[-5:]
            assert stats["scaled_frames"] > 0
        else:
            assert session.scale == 1.0 and {s[1:] for s in sizes} == {(512, 512)}
            assert stats["skipped_ticks"] > 30
        for _ in range(12 * 30):  # 12 s on time
            await frame(0.0)
            if session._rescaling is not None:
                await session._rescaling
        assert sizes[-1][1:] == (512, 512)
        if adapt:
            assert session.stats()["adapt"] == {"downs": 1, "ups": 1, "late_ticks": session.guard.late_ticks}
            small = [t for t, w, _ in sizes if w == 384]
            assert small and small[-1] - calm_from == pytest.approx(10.0, abs=0.5)  # the calm spell, still at 384
    finally:
        await session.close()
        await offerer.close()
    assert not session.tasks and session.pc.connectionState == "closed"
