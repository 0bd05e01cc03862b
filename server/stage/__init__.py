"""Stages and their outputs: the seam between making an avatar and showing it.

A :class:`~server.stage.stage.Stage` is one source (a speaker's microphone) driving one
avatar. Its *program* is the rendered video, on the video track's clock, plus the source audio
re-timed onto that clock and delayed by the video's own latency, so that each audio sample
plays with the frame that shows its mouth shape.

Everything that shows the program is an *output* subscribed to the stage:

- the speaker's own return video (the lowest-latency output, no audio; the session's track);
- viewers over WHEP (:mod:`server.stage.viewer`): the watch page, the OBS page, any player;
- a recording (:mod:`server.stage.record`).

A *local* stage (:mod:`server.stage.local`, ``avatar camera``) has a microphone on this machine
as its source and no network at all: its outputs (:mod:`server.stage.camera`) are a virtual
camera on the video track's clock, a virtual microphone fed by the same delayed program audio
(:class:`~server.stage.program.ProgramAudio` without Opus), and an MP4 recording stamped with
emission times (read back by :mod:`server.stage.sync`).

The program is encoded once per stage (:mod:`server.stage.program`): one VP8 encoder and one
Opus encoder serve every viewer, whose packets reach each output through its own bounded,
latest-only mailbox (:mod:`server.stage.outputs`), so a slow viewer drops its own frames and
never delays the others. A stage and its outputs live in the session's worker process.
"""

from server.stage.stage import Stage, StageEnded

__all__ = ["Stage", "StageEnded"]
