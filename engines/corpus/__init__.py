"""Synthetic aligned speech corpus: espeak-ng/festival speech, augmentation, shards of features + labels."""
