"""Real-time streaming avatar server: live audio in, lip-synced avatar video out."""

__version__ = "0.1.0"
