"""Inference backends for the exported viseme network, behind one interface."""
