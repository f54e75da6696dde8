"""What ``evaluate`` is asked to do, besides the models and datasets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DECODE_PATHS = ("cpu", "gpu")


@dataclass(frozen=True)
class EvaluateOptions:
    """Everything besides the models and datasets; only some of it binds a resumed run (see ``run._settings``)."""

    out: Path
    limit_per_class: int | None = None
    batch_size: int = 32
    workers: int = 0
    device: str | None = None  # None: cuda when available, else cpu
    templates: str = "openai"
    channels_last: bool | None = None  # None: on CUDA the faster format per model (measured), else contiguous
    allow_random: bool = False
    chunk_size: int = 2048  # rows per part file (whole batches)
    flush_seconds: float = 60.0  # ... or sooner, so a slow CPU run also checkpoints
    progress: bool = True
    cache_dir: Path | None = None  # zero-shot head cache; None: cache.default_cache_dir()
    command: tuple[str, ...] = field(default=())
    decode: str = "cpu"  # "gpu": JPEGs decoded and preprocessed on the device (data.gpu_decode)
    precision: str = "fp32"  # fp32 | bf16 | fp16: the models are cast, as `precision` does
