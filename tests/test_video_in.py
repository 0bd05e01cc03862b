"""The client's video jitter buffer releases a frame at its marked last packet."""

from __future__ import annotations

from pathlib import Path

from aiortc.rtp import RtpPacket

from server.client import AvatarClient, load_audio
from server.media.video_in import MarkerJitterBuffer
from tests.server_proc import ServerProcess, model_args


def _pkt(seq: int, ts: int, marker: bool, data: bytes) -> RtpPacket:
    p = RtpPacket(payload_type=96, marker=int(marker), sequence_number=seq, timestamp=ts, payload=data)
    p._data = data  # type: ignore[attr-defined]  # what aiortc's receiver sets: the depayloaded bytes
    return p


def test_frame_released_at_its_marker_not_at_the_next_frame() -> None:
    buf = MarkerJitterBuffer()
    assert buf.add(_pkt(10, 3000, False, b"a"))[1] is None
    frame = buf.add(_pkt(11, 3000, True, b"b"))[1]
    assert frame is not None and frame.data == b"ab" and frame.timestamp == 3000 and buf.early == 1
    # the next frame, its packets reordered: held until the first one fills the gap
    assert buf.add(_pkt(13, 6000, True, b"d"))[1] is None
    frame = buf.add(_pkt(12, 6000, False, b"c"))[1]
    assert frame is not None and frame.data == b"cd" and buf.early == 2


def test_without_a_marker_falls_back_to_the_next_frame() -> None:
    buf = MarkerJitterBuffer()
    assert buf.add(_pkt(1, 100, False, b"x"))[1] is None
    assert buf.add(_pkt(2, 100, False, b"y"))[1] is None  # the marked packet was lost / never set
    frame = buf.add(_pkt(3, 200, False, b"z"))[1]  # aiortc's rule: the next frame began
    assert frame is not None and frame.data == b"xy" and frame.timestamp == 100 and buf.early == 0


async def test_a_real_call_gets_its_frames_at_their_markers(netns: str, speech_wav: Path, tmp_path: Path) -> None:
    """The server's VP8 packets carry the marker bit, so the client decodes every frame at its
    last packet instead of one frame interval later."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\nworkers = 1\n")
    srv = ServerProcess(netns, tmp_path / "server.log", ["--config", str(cfg), "--data-dir", str(tmp_path / "d"), *model_args()])
    srv.start()
    try:
        client = AvatarClient(srv.url, load_audio(speech_wav), duration=3.0)
        try:
            await client.start()
            await client.wait_done()
        finally:
            await client.close()
    finally:
        srv.stop()
    frames = len(client.stats.frames)
    assert frames > 60 and client.video_buffer is not None
    assert client.video_buffer.early >= frames - 2, (client.video_buffer.early, frames)
