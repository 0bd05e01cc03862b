"""The viseme model: corpus synthesis, training, evaluation, export and inference backends.

Importing this package (or ``engines.spec``, ``engines.features``, ``engines.predictor``,
``engines.runtime``) never imports torch; only the training/export modules do.
"""
