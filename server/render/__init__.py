"""Avatar renderers: :class:`~server.pipeline.types.AnimationState` → RGBA frame."""
