"""The VP8 encoder for rendered frames: installed into aiortc's senders, decodable, keyframes."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc import RTCRtpCodecParameters
from aiortc.codecs.vpx import Vp8Encoder, vp8_depayload

from server.media import vp8


def _frames(n: int, size: int = 128) -> list[av.VideoFrame]:
    out = []
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        y = ((xx + 3 * i) % size * 255 // size).astype(np.uint8)
        y[(yy - 64) ** 2 + (xx - 40 - i) ** 2 < 200] = 30
        yuv = np.concatenate([y, np.full((size // 2, size), 128, np.uint8)])
        f = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        f.time_base = Fraction(1, 90000)
        f.pts = i * 3000
        out.append(f)
    return out


def _decode(payload_lists: list[list[bytes]]) -> list[np.ndarray]:
    dec = av.CodecContext.create("libvpx", "r")
    out = []
    for payloads in payload_lists:
        data = b"".join(vp8_depayload(p) for p in payloads)
        for fr in dec.decode(av.Packet(data)):
            out.append(fr.to_ndarray(format="yuv420p"))
    return out


def test_install_swaps_only_vp8() -> None:
    import aiortc.rtcrtpsender as sender

    vp8.install(-8)
    vp8.install(-8)  # idempotent: still one wrapper around aiortc's function
    enc = sender.get_encoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96))
    assert isinstance(enc, vp8.RenderedVp8Encoder) and enc.cpu_used == -8
    assert isinstance(enc, Vp8Encoder)
    opus = sender.get_encoder(RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111))
    assert not isinstance(opus, Vp8Encoder)
    assert sender.get_encoder.__wrapped__.__module__ == "aiortc.codecs"  # type: ignore[attr-defined]


def test_encodes_decodable_frames_with_our_options() -> None:
    enc = vp8.RenderedVp8Encoder(-8)
    frames = _frames(12)
    out = [enc.encode(f, force_keyframe=(i == 6))[0] for i, f in enumerate(frames)]
    assert enc.codec is not None and enc.codec is enc.own_codec
    assert enc.options["noise-sensitivity"] == "0" and enc.options["cpu-used"] == "-8"
    decoded = _decode(out)
    assert len(decoded) == len(frames)
    err = np.abs(decoded[-1][:128].astype(int) - frames[-1].to_ndarray(format="yuv420p")[:128].astype(int)).mean()
    assert err < 6.0, f"decoded frame differs by {err:.1f} grey levels on average"
    # a forced keyframe (what a PLI asks for) sets the VP8 key-frame bit (P = 0 in the first byte)
    assert vp8_depayload(out[6][0])[0] & 1 == 0 and vp8_depayload(out[7][0])[0] & 1 == 1


def test_reopens_on_size_change_and_rejects_bad_speed() -> None:
    enc = vp8.RenderedVp8Encoder()
    enc.encode(_frames(1, 128)[0])
    first = enc.codec
    enc.encode(_frames(1, 64)[0])
    assert enc.codec is not first and enc.codec is enc.own_codec and enc.codec.width == 64
    with pytest.raises(ValueError, match="cpu_used 20"):
        vp8.RenderedVp8Encoder(20)


def test_bitrate_ceiling_holds_against_remb() -> None:
    enc = vp8.RenderedVp8Encoder(max_bitrate=400_000)
    assert enc.target_bitrate == 400_000  # aiortc would start at 500 kbit/s
    enc.target_bitrate = 1_500_000  # what a receiver's REMB asks for on a fast link
    assert enc.target_bitrate == 400_000
    enc.target_bitrate = 250_000  # REMB may still lower it
    assert enc.target_bitrate == 250_000
    enc.encode(_frames(1)[0])
    assert enc.codec is enc.own_codec and enc.codec.bit_rate == 250_000
    with pytest.raises(ValueError, match="max_bitrate 10"):
        vp8.RenderedVp8Encoder(max_bitrate=10)


def test_remb_steps_reopen_with_hysteresis() -> None:
    """A falling estimate re-opens at once only past DOWN_STEP; a rising one only past UP_STEP
    after UP_HOLD_S of stream time; every re-open (and only a re-open) is a keyframe, always with
    our options (aiortc's own 10 % rule must never re-open the context behind our back)."""
    enc = vp8.RenderedVp8Encoder(-8, max_bitrate=500_000)
    frames = _frames(200)  # 30 fps stream time: frame i is at i / 30 s
    plan = {10: 450_000, 20: 360_000, 30: 420_000, 40: 480_000, 190: 480_000}
    keyframes: list[int] = []
    contexts: list[object] = []  # kept alive, so no id is reused
    for i, f in enumerate(frames):
        if i in plan:
            enc.target_bitrate = plan[i]
        payloads, _ = enc.encode(f)
        if not contexts or contexts[-1] is not enc.codec:
            contexts.append(enc.codec)
        assert enc.codec is enc.own_codec and enc.options["noise-sensitivity"] == vp8.DENOISE_OFF
        if vp8_depayload(payloads[0])[0] & 1 == 0:
            keyframes.append(i)
    # 500k open; 450k (-10 %) kept; 360k (< 0.8 x 500k) at once; 420k (+17 %) kept; 480k
    # (+33 %) only once 5 s of stream time have passed since the 360k context opened (frame 170)
    assert keyframes == [0, 20, 170], keyframes
    assert enc.opens == 3 and len(contexts) == 3
    assert enc.codec is not None and enc.codec.bit_rate == 480_000
