"""The per-session audio→animation chain, as small typed stages (``push``/``reset``)."""
