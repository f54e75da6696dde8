"""The models on the device: which device, the precision cast, and each model's memory format."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import torch

from clipcompare.dtypes import DTYPES, parse_dtype
from clipcompare.errors import UserError
from clipcompare.evaluation.options import EvaluateOptions
from clipcompare.models.classifier import Classifier, create_classifiers
from clipcompare.models.spec import ModelSpec

log = logging.getLogger(__name__)


def resolve_device(name: str | None) -> torch.device:
    """``None``/``auto`` → cuda when available; an unusable device is a UserError."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device


def load_classifiers(specs: Sequence[ModelSpec], options: EvaluateOptions, device: torch.device) -> list[Classifier]:
    """Each model on ``device`` as ``options`` asks (templates, head cache, random weights, precision)."""
    from clipcompare.cache import default_cache_dir

    return create_classifiers(specs, templates=options.templates, cache_dir=options.cache_dir or default_cache_dir(),
                              allow_random=options.allow_random, device=device,
                              dtype=DTYPES[parse_dtype(options.precision)])


def choose_formats(
    classifiers: Sequence[Classifier], options: EvaluateOptions, device: torch.device,
    stored: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Each model's memory format by name (``channels_last`` / ``contiguous``): as
    ``--[no-]channels-last`` says; else on CUDA ``stored`` (a resumed run's choice) where it names the
    model, else timed (:func:`fastest_memory_format`); else contiguous.

    A resumed run keeps its formats so every part of its predictions comes from the same one (the
    two differ by ~1e-6, which can flip a near-tie); under torchrun rank 0 decides for all ranks.
    """
    if options.channels_last is not None or device.type != "cuda":
        fixed = "channels_last" if options.channels_last else "contiguous"
        return {c.name: fixed for c in classifiers}
    stored = stored or {}
    return {c.name: stored.get(c.name) or format_name(fastest_memory_format(c, options.batch_size, device))
            for c in classifiers}


def apply_formats(classifiers: Sequence[Classifier], chosen: Mapping[str, str]) -> list[torch.memory_format]:
    """Lay each model out as ``chosen`` names it; its memory format, in model order."""
    formats = []
    for clf in classifiers:
        fmt = torch.channels_last if chosen[clf.name] == "channels_last" else torch.contiguous_format
        clf.model.to(memory_format=fmt)
        formats.append(fmt)
    return formats


def fastest_memory_format(clf: Classifier, batch_size: int, device: torch.device, repeats: int = 3) -> torch.memory_format:
    """contiguous or channels_last, whichever runs ``clf``'s image tower faster on a random batch
    shaped like its preprocessing output (synchronised timing, after a warm-up call)."""
    from PIL import Image

    shape = clf.preprocess(Image.new("RGB", (500, 375))).shape
    best, best_time = torch.contiguous_format, float("inf")
    for fmt in (torch.contiguous_format, torch.channels_last):
        clf.model.to(memory_format=fmt)
        x = torch.randn(batch_size, *shape, device=device, dtype=clf.dtype).contiguous(memory_format=fmt)
        with torch.inference_mode():
            clf.features(x)  # warm-up: cuDNN picks its algorithms
            _synchronize(device)
            start = time.perf_counter()
            for _ in range(repeats):
                clf.features(x)
            _synchronize(device)
        seconds = time.perf_counter() - start
        log.info("%s: %s %.1f ms per batch of %d", clf.name, format_name(fmt), 1000 * seconds / repeats, batch_size)
        if seconds < best_time:
            best, best_time = fmt, seconds
    return best


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_name(fmt: torch.memory_format) -> str:
    return "channels_last" if fmt == torch.channels_last else "contiguous"
