"""Configuration: TOML files (configs/default.toml documents every key and unit) → frozen dataclasses.

Unknown keys and out-of-range values raise :class:`ConfigError` naming the key and the value.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "default.toml"


def _check(cond: bool, key: str, value: object, want: str) -> None:
    if not cond:
        raise ConfigError(f"{key} must be {want}, got {value!r}")


@dataclass(frozen=True, slots=True)
class IceServer:
    """One STUN/TURN server for aiortc and the browser."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """[server]: network and limits."""

    host: str = "127.0.0.1"
    port: int = 8080
    max_sessions: int = 16  # concurrent sessions; more are refused with an error
    max_message_bytes: int = 262_144  # bytes, largest accepted signaling message
    stats_interval_s: float = 1.0  # s between `stats` events to each client
    frame_times_interval_ms: float = 200.0  # ms between `frame_times` events (whole-path stamps); 0 = none
    ice_servers: tuple[IceServer, ...] = ()  # none: no public STUN server is contacted
    turn_secret: str = ""  # coturn static-auth-secret: per-call TURN credentials for turn_urls; "" = off
    turn_urls: tuple[str, ...] = ()  # TURN URLs the minted credentials are for ("turn:host:3478?transport=udp")
    turn_ttl_s: int = 3600  # s, lifetime of each minted TURN credential
    ice_transport_policy: str = "all"  # the clients' ICE candidates: "all", or "relay" (TURN only)
    workers: int | str = "auto"  # session worker processes: 0 = in the server process, "auto" = two per core
    auth: str = "auto"  # access tokens: "required", "off", or "auto" (required unless listening on loopback)
    token_secret: str = ""  # HMAC secret signing access tokens (>= 32 chars); "" = a random one kept in the data dir
    allowed_origins: tuple[str, ...] = ()  # origins besides the server's own allowed on /ws and POST/DELETE
    offer_timeout_s: float = 15.0  # s after connecting by which a socket must have an accepted offer
    connect_timeout_s: float = 30.0  # s after the answer by which the peer connection must have connected
    max_pending_sockets: int = 64  # signaling sockets without an accepted offer, all clients together
    max_sockets_per_client: int = 16  # open signaling sockets per client address
    max_sessions_per_client: int = 8  # sessions (accepted offers) per client address
    max_uploads: int = 2  # photo uploads processed at once, all clients together
    max_uploads_per_client: int = 1  # photo uploads processed at once per client address
    keepalive_timeout_s: float = 5.0  # s an HTTP connection may stay without a request (after connect or a response)
    max_request_bytes: int = 65_536  # bytes, largest request body except the photo upload
    max_photo_bytes: int = 15 << 20  # bytes, largest photo upload (the whole multipart body)
    upload_timeout_s: float = 60.0  # s to receive a photo upload
    log_format: str = "text"  # log lines: "text" or "json" (one object per line)
    worker_recycle_sessions: int = 500  # sessions after which a worker is replaced once its live ones end; 0 = never

    def worker_count(self) -> int:
        """Resolved number of session worker processes (0: sessions run in the server process).

        ``auto``: two per core (a core carries about two sessions, and sessions sharing a
        process contend for its GIL: render and encode waits grow, ticks get skipped), at most
        ``max_sessions``; 0 on a single core.
        """
        if self.workers == "auto":
            cores = os.cpu_count() or 1
            return min(2 * cores, self.max_sessions) if cores > 1 else 0
        return int(self.workers)

    def _check_turn(self) -> None:
        _check(isinstance(self.turn_secret, str), "server.turn_secret", self.turn_secret, "a string")
        for url in self.turn_urls:
            _check(isinstance(url, str) and url.startswith(("turn:", "turns:")) and len(url) > 6, "server.turn_urls", url,
                   'a list of "turn:host:port[?transport=udp|tcp]" or "turns:..." URLs')
        _check(bool(self.turn_urls) or not self.turn_secret, "server.turn_urls", list(self.turn_urls),
               "at least one TURN URL when server.turn_secret is set")
        _check(bool(self.turn_secret) or not self.turn_urls, "server.turn_secret", self.turn_secret,
               "set (coturn's static-auth-secret) when server.turn_urls are given")
        _check(isinstance(self.turn_ttl_s, int) and not isinstance(self.turn_ttl_s, bool) and 0 < self.turn_ttl_s <= 7 * 86400,
               "server.turn_ttl_s", self.turn_ttl_s, "an integer in 1..604800 s")
        _check(self.ice_transport_policy in ("all", "relay"), "server.ice_transport_policy", self.ice_transport_policy, '"all" or "relay"')
        has_turn = bool(self.turn_urls) or any(u.startswith(("turn:", "turns:")) for s in self.ice_servers for u in s.urls)
        _check(self.ice_transport_policy == "all" or has_turn, "server.ice_transport_policy", self.ice_transport_policy,
               '"all" unless a TURN server is configured (server.turn_urls or a turn: URL in server.ice_servers)')

    def __post_init__(self) -> None:
        _check(self.workers == "auto" or (isinstance(self.workers, int) and 0 <= self.workers <= 64), "server.workers", self.workers, '"auto" or an integer in 0..64')
        _check(0 < self.port < 65536, "server.port", self.port, "in 1..65535")
        _check(self.auth in ("auto", "required", "off"), "server.auth", self.auth, 'one of "auto", "required", "off"')
        _check(self.max_sessions >= 1, "server.max_sessions", self.max_sessions, ">= 1")
        _check(1024 <= self.max_message_bytes <= 16 << 20, "server.max_message_bytes", self.max_message_bytes, "in 1 KiB..16 MiB")
        _check(0.1 <= self.stats_interval_s <= 60, "server.stats_interval_s", self.stats_interval_s, "in 0.1..60 s")
        _check(self.frame_times_interval_ms == 0 or 20 <= self.frame_times_interval_ms <= 10_000, "server.frame_times_interval_ms",
               self.frame_times_interval_ms, "0 or in 20..10000 ms")
        _check(0.5 <= self.offer_timeout_s <= 600, "server.offer_timeout_s", self.offer_timeout_s, "in 0.5..600 s")
        _check(0.5 <= self.connect_timeout_s <= 600, "server.connect_timeout_s", self.connect_timeout_s, "in 0.5..600 s")
        _check(0.5 <= self.keepalive_timeout_s <= 600, "server.keepalive_timeout_s", self.keepalive_timeout_s, "in 0.5..600 s")
        _check(1 <= self.upload_timeout_s <= 3600, "server.upload_timeout_s", self.upload_timeout_s, "in 1..3600 s")
        for key in ("max_pending_sockets", "max_sockets_per_client", "max_sessions_per_client", "max_uploads", "max_uploads_per_client"):
            value = getattr(self, key)
            _check(isinstance(value, int) and 1 <= value <= 100_000, f"server.{key}", value, "an integer in 1..100000")
        _check(1024 <= self.max_request_bytes <= 16 << 20, "server.max_request_bytes", self.max_request_bytes, "in 1 KiB..16 MiB")
        _check(self.log_format in ("text", "json"), "server.log_format", self.log_format, 'one of "text", "json"')
        _check(isinstance(self.worker_recycle_sessions, int) and 0 <= self.worker_recycle_sessions <= 10**9,
               "server.worker_recycle_sessions", self.worker_recycle_sessions, "an integer >= 0 (0 = never)")
        _check(64 << 10 <= self.max_photo_bytes <= 256 << 20, "server.max_photo_bytes", self.max_photo_bytes, "in 64 KiB..256 MiB")
        self._check_turn()
        from server.security import parse_allowed

        parse_allowed(self.allowed_origins)  # raises ConfigError naming a bad entry


@dataclass(frozen=True, slots=True)
class AudioConfig:
    """[audio]: ingestion."""

    queue_frames: int = 25  # incoming 20 ms frames buffered before the oldest are dropped (500 ms)
    jitter: str = "adaptive"  # receive jitter buffer: "adaptive" (server/media/jitter.py) or "aiortc" (fixed 80 ms)
    jitter_max_ms: float = 100.0  # ms, ceiling on the adaptive buffer's target delay
    mic_ptime_ms: int = 10  # ms, Opus packet duration asked of the browser (a=ptime in the answer)

    def __post_init__(self) -> None:
        _check(2 <= self.queue_frames <= 500, "audio.queue_frames", self.queue_frames, "in 2..500")
        _check(self.jitter in ("adaptive", "aiortc"), "audio.jitter", self.jitter, '"adaptive" or "aiortc"')
        _check(self.mic_ptime_ms in (10, 20, 40, 60), "audio.mic_ptime_ms", self.mic_ptime_ms, "one of 10, 20, 40, 60 ms")
        _check(isinstance(self.jitter_max_ms, int | float) and 0 <= self.jitter_max_ms <= 1000, "audio.jitter_max_ms", self.jitter_max_ms, "in 0..1000 ms")


@dataclass(frozen=True, slots=True)
class VadConfig:
    """[vad]: silero voice activity detection with hysteresis."""

    threshold_on: float = 0.5  # probability that starts speech
    threshold_off: float = 0.35  # probability below which speech may end
    hangover_ms: float = 96.0  # ms below threshold_off before speech ends
    gate: bool = True  # push viseme weights to `sil` while not speaking

    def __post_init__(self) -> None:
        _check(0 < self.threshold_on < 1, "vad.threshold_on", self.threshold_on, "in (0, 1)")
        _check(0 < self.threshold_off <= self.threshold_on, "vad.threshold_off", self.threshold_off, "in (0, vad.threshold_on]")
        _check(0 <= self.hangover_ms <= 2000, "vad.hangover_ms", self.hangover_ms, "in 0..2000 ms")


@dataclass(frozen=True, slots=True)
class VisemeConfig:
    """[visemes]: the predictor."""

    model: str = "default"  # "default" (engines/weights/visemes.onnx), "energy", or a .onnx path
    engine: str = "auto"  # auto | tensorrt | cuda | onnxruntime
    channel_interval_ms: float = 40.0  # ms, least time between two `visemes` data-channel messages

    def __post_init__(self) -> None:
        _check(0.0 <= self.channel_interval_ms <= 1000.0, "visemes.channel_interval_ms", self.channel_interval_ms, "in 0..1000 ms")
        _check(self.engine in ("auto", "tensorrt", "cuda", "onnxruntime"), "visemes.engine", self.engine, "one of auto, tensorrt, cuda, onnxruntime")
        _check(bool(self.model), "visemes.model", self.model, "a model name or path")


@dataclass(frozen=True, slots=True)
class VideoConfig:
    """[video]: the returned avatar video."""

    width: int = 512  # px
    height: int = 512  # px
    fps: float = 30.0  # frames per second
    avatar: str = "auto"  # avatar name (see `avatar avatars`); auto = the default character
    vp8_cpu_used: int = -12  # libvpx cpu-used, -16..16: larger magnitude = faster encode, lower quality
    max_bitrate_kbps: int = 500  # kbit/s, ceiling on the VP8 target bitrate the receiver's REMB asks for
    playout_delay_ms: int = 0  # ms, playout delay asked of the speaker's browser for its return video; -1 = not asked
    adapt: bool = True  # keep the frame rate under CPU overload by rendering at adapt_scale (server/media/adapt.py)
    adapt_scale: float = 0.75  # fraction of width and height rendered while overloaded
    disclosure: str = "photo"  # "AI avatar" badge drawn into the video: "photo" (photo avatars), "always", "off"

    def __post_init__(self) -> None:
        _check(isinstance(self.adapt, bool), "video.adapt", self.adapt, "true or false")
        _check(self.disclosure in ("photo", "always", "off"), "video.disclosure", self.disclosure, 'one of "photo", "always", "off"')
        _check(0.25 <= self.adapt_scale <= 1.0, "video.adapt_scale", self.adapt_scale, "in 0.25..1 (fraction of width and height)")
        _check(-16 <= self.vp8_cpu_used <= 16, "video.vp8_cpu_used", self.vp8_cpu_used, "in -16..16")
        _check(isinstance(self.playout_delay_ms, int) and -1 <= self.playout_delay_ms <= 40_950, "video.playout_delay_ms",
               self.playout_delay_ms, "an integer in -1..40950 ms")
        _check(50 <= self.max_bitrate_kbps <= 10_000, "video.max_bitrate_kbps", self.max_bitrate_kbps, "in 50..10000 kbit/s")
        _check(64 <= self.width <= 1920 and self.width % 2 == 0, "video.width", self.width, "even, 64..1920")
        _check(64 <= self.height <= 1920 and self.height % 2 == 0, "video.height", self.height, "even, 64..1920")
        _check(1 <= self.fps <= 60, "video.fps", self.fps, "in 1..60")


@dataclass(frozen=True, slots=True)
class StageConfig:
    """[stage]: what the speaker's audience (viewers, OBS, players) receives."""

    max_viewers: int = 50  # viewers per stage; more get a "stage_full" refusal
    keyframe_interval_s: float = 2.0  # s, longest time between two keyframes of the viewers' video
    keyframe_min_gap_s: float = 0.5  # s, shortest time between keyframes asked for by joins and PLI/FIR
    min_bitrate_kbps: int = 150  # kbit/s, floor for the viewers' shared video rate (the slowest REMB lowers it)
    record: bool = False  # record every stage from its start (WebM, no re-encode) into record_dir
    record_dir: str = ""  # where recordings go ("" = <avatars.data_dir>/recordings)

    def __post_init__(self) -> None:
        _check(isinstance(self.max_viewers, int) and 0 <= self.max_viewers <= 1000, "stage.max_viewers", self.max_viewers, "an integer in 0..1000")
        _check(0.5 <= self.keyframe_interval_s <= 60.0, "stage.keyframe_interval_s", self.keyframe_interval_s, "in 0.5..60 s")
        _check(0.05 <= self.keyframe_min_gap_s <= self.keyframe_interval_s, "stage.keyframe_min_gap_s", self.keyframe_min_gap_s, "in 0.05 s..stage.keyframe_interval_s")
        _check(30 <= self.min_bitrate_kbps <= 10_000, "stage.min_bitrate_kbps", self.min_bitrate_kbps, "in 30..10000 kbit/s")
        _check(isinstance(self.record, bool), "stage.record", self.record, "true or false")


@dataclass(frozen=True, slots=True)
class PublishConfig:
    """[publish]: send every stage's program once to an SFU (which fans it out)."""

    janus_url: str = ""  # Janus HTTP API, e.g. "http://janus.example:8088/janus"; "" = off
    room: int = 1234  # Janus VideoRoom room id (created when it does not exist)
    room_secret: str = ""  # the room's secret, used when this server creates the room
    room_pin: str = ""  # the room's PIN, when it has one
    token: str = ""  # Janus token (token_auth), when Janus requires one
    api_secret: str = ""  # Janus API secret, when Janus requires one
    display: str = ""  # the publisher's display name in the room ("" = "avatar <stage id>")
    whip_url: str = ""  # a WHIP endpoint (RFC 9725: LiveKit Ingress, Cloudflare, mediamtx, SRS); "" = off
    whip_token: str = ""  # sent as "Authorization: Bearer <token>" to the WHIP endpoint

    def __post_init__(self) -> None:
        for key in ("janus_url", "whip_url"):
            url = getattr(self, key)
            _check(url == "" or url.startswith(("http://", "https://")), f"publish.{key}", url, 'an http(s):// URL or ""')
        _check(isinstance(self.room, int) and 1 <= self.room < 2**53, "publish.room", self.room, "a positive integer")

    @property
    def enabled(self) -> bool:
        """Whether any target is configured."""
        return bool(self.janus_url or self.whip_url)


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "avatar-server"


@dataclass(frozen=True, slots=True)
class AvatarsConfig:
    """[avatars]: where user avatars (photos) are stored."""

    data_dir: Path = field(default_factory=_default_data_dir)
    max_store_mb: float = 500.0  # MiB, disk quota for stored photo avatars; uploads beyond it are refused

    def __post_init__(self) -> None:
        _check(0 < self.max_store_mb <= 1 << 20, "avatars.max_store_mb", self.max_store_mb, "in (0, 1048576] MiB")


@dataclass(frozen=True, slots=True)
class AppConfig:
    """The whole configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    visemes: VisemeConfig = field(default_factory=VisemeConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    avatars: AvatarsConfig = field(default_factory=AvatarsConfig)
    animation: dict[str, Any] = field(default_factory=dict)  # → AnimationConfig(**animation)
    seed: int = 0  # seeds per-session animation randomness (session i uses seed + i)


def _build(cls: type, section: str, table: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    for key in table:
        if key not in names:
            raise ConfigError(f"unknown key {section}.{key} (known: {', '.join(sorted(names))})")
    kwargs = dict(table)
    if cls is ServerConfig and "ice_servers" in kwargs:
        servers = []
        for i, s in enumerate(kwargs["ice_servers"]):
            urls = s.get("urls")
            if isinstance(urls, str):
                urls = [urls]
            if not urls:
                raise ConfigError(f"server.ice_servers[{i}].urls is required, got {s!r}")
            servers.append(IceServer(tuple(urls), s.get("username"), s.get("credential")))
        kwargs["ice_servers"] = tuple(servers)
    if cls is ServerConfig and "allowed_origins" in kwargs:
        origins = kwargs["allowed_origins"]
        if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
            raise ConfigError(f"server.allowed_origins must be a list of origin strings, got {origins!r}")
        kwargs["allowed_origins"] = tuple(origins)
    if cls is ServerConfig and "turn_urls" in kwargs:
        urls = kwargs["turn_urls"]
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise ConfigError(f"server.turn_urls must be a list of TURN URL strings, got {urls!r}")
        kwargs["turn_urls"] = tuple(urls)
    if cls is AvatarsConfig and "data_dir" in kwargs:
        kwargs["data_dir"] = Path(os.path.expanduser(str(kwargs["data_dir"])))
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"[{section}]: {e}") from e


_SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "audio": AudioConfig,
    "vad": VadConfig,
    "visemes": VisemeConfig,
    "video": VideoConfig,
    "stage": StageConfig,
    "publish": PublishConfig,
    "avatars": AvatarsConfig,
}


def config_from_dict(data: dict[str, Any]) -> AppConfig:
    """Build an :class:`AppConfig` from a parsed TOML document."""
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"[{key}] must be a table, got {value!r}")
            kwargs[key] = _build(_SECTIONS[key], key, value)
        elif key == "animation":
            if not isinstance(value, dict):
                raise ConfigError(f"[animation] must be a table, got {value!r}")
            from server.pipeline.animation import AnimationConfig

            _build(AnimationConfig, "animation", value)  # validate now, fail at start-up
            kwargs[key] = dict(value)
        elif key == "seed":
            kwargs[key] = int(value)
        else:
            raise ConfigError(f"unknown config section {key!r} (known: {', '.join(sorted([*_SECTIONS, 'animation', 'seed']))})")
    return AppConfig(**kwargs)


def load_config(path: Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> AppConfig:
    """Read ``path`` (default: configs/default.toml when present), then apply ``overrides``."""
    data: dict[str, Any] = {}
    src = path if path is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    if src is not None:
        try:
            with open(src, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError as e:
            raise ConfigError(f"config file not found: {src}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {src} is not valid TOML: {e}") from e
    for section, table in (overrides or {}).items():
        data.setdefault(section, {}).update(table)
    return config_from_dict(data)


def animation_config(cfg: AppConfig) -> Any:
    """The :class:`~server.pipeline.animation.AnimationConfig` for ``cfg``."""
    from server.pipeline.animation import AnimationConfig

    return _build(AnimationConfig, "animation", cfg.animation)
