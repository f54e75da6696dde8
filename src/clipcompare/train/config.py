"""The settings of one training run: what run.json stores and what ``--resume`` must match."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from clipcompare.errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16")

# Settings that may change between a run and its resumption without changing its result.
RESUMABLE = frozenset({"workers", "resume", "save_every", "device", "out"})


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run; the defaults are the reference setup (ResNet-50 → frozen ViT-B/32 text)."""

    out: str
    coco: str | None = None
    split: str = "seed"
    train_size: int | None = None
    val_size: int | None = None
    captions: str | None = None
    image_model: str = "resnet50:IMAGENET1K_V2"
    text_model: str = "clip:ViT-B-32"
    embed_dim: int | None = None  # None: the text tower's width (it must match it)
    image_size: int = 224
    epochs: int = 10
    batch_size: int = 128  # per process and micro-batch; an optimizer step sees batch_size × accum_freq × processes
    lr: float = 1e-4
    wd: float = 0.1
    warmup: int = 100  # optimizer steps
    accum_freq: int = 1
    grad_clip: float | None = None
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    cache_images: bool = False
    fixed_temperature: bool = False
    seed: int = 0
    workers: int = 2
    device: str = "cpu"
    save_every: int = 0  # also checkpoint every N optimizer steps (0: at epoch ends only)
    resume: bool = False
    allow_random: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        for name in ("epochs", "batch_size", "accum_freq", "image_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr <= 0:
            raise UserError("--lr must be positive")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise UserError("--grad-clip must be positive")
        if self.warmup < 0 or self.save_every < 0 or self.workers < 0:
            raise UserError("--warmup, --save-every and --workers cannot be negative")
        if self.text_model.startswith("clip:local-dir:"):
            # stored absolute: the trained checkpoint rebuilds its text tower from that folder's config,
            # whatever directory it is loaded from later
            from clipcompare.models.spec import parse_spec

            object.__setattr__(self, "text_model", f"clip:{parse_spec(self.text_model).arch}")
        elif self.text_model.startswith("hf:"):
            from clipcompare.models.spec import parse_spec

            spec = parse_spec(self.text_model)  # a folder's spec holds it absolute (a repo id as given)
            object.__setattr__(self, "text_model", f"hf:{spec.arch}")

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with the stored one."""
        return {k: v for k, v in self.as_dict().items() if k not in RESUMABLE}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``name: old → new`` for the first few settings that differ."""
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in keys[:3]) + (" ..." if len(keys) > 3 else "")
