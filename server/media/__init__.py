"""WebRTC media: the paced avatar video track and audio draining."""
