"""Contrastive fine-tuning: an image tower trained into a frozen CLIP text tower's embedding space.

Laid out like open_clip_train, in small pieces: ``config`` (the settings), ``model`` (image tower +
projection head, frozen text tower, temperature; ``load_trained``), ``images`` (pixels, optionally
from a memory-mapped cache), ``loop`` (one epoch, validation), ``checkpoint`` (save/resume),
``distributed`` (torchrun), ``main`` (``train(config) -> dict``).
"""
