"""The project's few exception types. Messages name the offending value."""


class AvatarError(Exception):
    """Base class for errors this package raises on purpose."""


class ConfigError(AvatarError):
    """A configuration value is missing or out of range."""


class ProtocolError(AvatarError):
    """A client message breaks the signaling protocol; ``code`` is sent back to the client."""

    def __init__(self, code: str, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.fatal = fatal


class MediaError(AvatarError):
    """Audio or video input cannot be read or has the wrong kind."""


class AvatarNotFound(AvatarError):
    """No avatar of that name is registered."""


class BackendError(AvatarError):
    """An inference backend cannot be loaded or run."""


class DeviceError(AvatarError):
    """A local device (microphone, virtual camera, virtual microphone) is missing, busy or gone."""
