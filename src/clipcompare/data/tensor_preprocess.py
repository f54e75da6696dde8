"""A model's PIL preprocessing, re-expressed as tensor ops that run on a batch on any device.

:func:`tensor_preprocess` reads the resize size, interpolation, antialiasing, crop and
normalisation out of the model's own transform object (torchvision's ``ImageClassification``, or
a ``transforms.Compose`` of Resize / CenterCrop / to-tensor / Normalize as open_clip builds it), so
nothing is hard-coded per model; a step it does not know is an error, never silently dropped.
:class:`TensorPreprocess` then applies them to uint8 RGB images ``[3, H, W]`` (as
TorchCodec's ``decode_jpeg`` returns them, on CPU or CUDA) with torchvision's tensor kernels:
the same output size as the PIL path, the resized image rounded back to uint8 as PIL does, then
``/255`` and the mean/std.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F


class UnsupportedTransform(ValueError):
    """The transform has a step with no tensor equivalent here."""


@dataclass(frozen=True)
class TensorPreprocess:
    """resize → center crop → [0, 1] → normalise, on uint8 ``[3, H, W]`` images of any device."""

    resize: tuple[int, ...] | None  # torchvision's ``size``: (short side,) or (h, w); None: no resize
    max_size: int | None
    interpolation: InterpolationMode
    antialias: bool
    crop: tuple[int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Float ``[N, 3, h, w]`` for ``images`` (uint8 ``[3, H, W]`` each, one device); images of the
        same size are resized together, which is what makes this fast on a GPU."""
        if not images:
            raise ValueError("no images")
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(tuple(img.shape[-2:]), []).append(i)
        device = images[0].device
        out: torch.Tensor | None = None
        for (h, w), idx in groups.items():
            x = torch.stack([images[i] for i in idx]) if len(idx) > 1 else images[idx[0]].unsqueeze(0)
            x = self._apply(x)
            if len(groups) == 1:
                return x
            if out is None:
                out = torch.empty((len(images), *x.shape[1:]), dtype=x.dtype, device=device)
            out[torch.as_tensor(idx, device=device)] = x
        assert out is not None
        return out

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize is not None:
            # uint8 in, uint8 out: torchvision rounds (and for bicubic clamps) the resized values
            # back to 8 bits, as PIL does before ToTensor
            x = F.resize(x, list(self.resize), interpolation=self.interpolation, max_size=self.max_size,
                         antialias=self.antialias)
        if self.crop is not None:
            x = F.center_crop(x, list(self.crop))
        x = x.float().div_(255)
        return F.normalize(x, list(self.mean), list(self.std))

    def describe(self) -> dict[str, Any]:
        """For run.json: what the tensor path applies."""
        return {"resize": list(self.resize) if self.resize else None, "interpolation": self.interpolation.value,
                "antialias": self.antialias, "crop": list(self.crop) if self.crop else None,
                "mean": list(self.mean), "std": list(self.std)}


def _size(value: Any) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _crop(value: Any) -> tuple[int, int]:
    size = _size(value)
    return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])


# Steps that only turn a PIL image into RGB / a [0, 1] float tensor: the tensor path's input is
# already RGB uint8 and the division by 255 is built in. Matched by name so open_clip's helpers
# (MaybeConvertMode, MaybeToTensor, _convert_to_rgb) need not be imported.
_TO_TENSOR_STEPS = frozenset({"ToTensor", "MaybeToTensor", "PILToTensor"})
_RGB_STEPS = frozenset({"MaybeConvertMode", "_convert_to_rgb", "convert_to_rgb"})


def tensor_preprocess(transform: Any) -> TensorPreprocess:
    """The tensor equivalent of a model's PIL ``transform``; :class:`UnsupportedTransform` otherwise.

    A transform with a ``tensor_preprocess()`` method gives its own: any callable with
    :class:`TensorPreprocess`'s ``__call__`` and ``describe``."""
    from torchvision import transforms as T

    name = type(transform).__name__
    own = getattr(transform, "tensor_preprocess", None)
    if callable(own):  # a transform that brings its own tensor form (the models layer's hf: processors)
        return own()
    if name == "ImageClassification":  # torchvision weights' transforms(): attributes say it all
        return TensorPreprocess(
            resize=_size(transform.resize_size), max_size=None, interpolation=transform.interpolation,
            antialias=bool(transform.antialias), crop=_crop(transform.crop_size),
            mean=tuple(transform.mean), std=tuple(transform.std),
        )
    if not isinstance(transform, T.Compose):
        raise UnsupportedTransform(f"no tensor equivalent for {name}")
    fields: dict[str, Any] = {"resize": None, "max_size": None, "interpolation": InterpolationMode.BILINEAR,
                              "antialias": True, "crop": None, "mean": None, "std": None}
    scaled = False
    for step in transform.transforms:
        kind = getattr(step, "__name__", None) or type(step).__name__
        if isinstance(step, T.Resize) and type(step) is T.Resize:
            if fields["resize"] is not None or fields["crop"] is not None or scaled:
                raise UnsupportedTransform("Resize after another geometric step or after ToTensor")
            fields.update(resize=_size(step.size), max_size=step.max_size, interpolation=step.interpolation,
                          antialias=True if step.antialias is None else bool(step.antialias))
        elif isinstance(step, T.CenterCrop) and type(step) is T.CenterCrop:
            if fields["crop"] is not None or scaled:
                raise UnsupportedTransform("two CenterCrops, or a CenterCrop after ToTensor")
            fields["crop"] = _crop(step.size)
        elif kind in _RGB_STEPS and getattr(step, "mode", "RGB") == "RGB":
            continue
        elif kind in _TO_TENSOR_STEPS:
            scaled = kind != "PILToTensor"
        elif isinstance(step, T.ConvertImageDtype) and step.dtype == torch.float32:
            scaled = True
        elif isinstance(step, T.Normalize) and type(step) is T.Normalize:
            if not scaled or fields["mean"] is not None:
                raise UnsupportedTransform("Normalize before the image is scaled to [0, 1]")
            fields.update(mean=tuple(float(m) for m in step.mean), std=tuple(float(s) for s in step.std))
        else:
            raise UnsupportedTransform(f"no tensor equivalent for the step {kind}")
    if not scaled:
        raise UnsupportedTransform("the transform never converts the image to a float tensor")
    if fields["mean"] is None:  # no Normalize: identity mean/std
        fields.update(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return TensorPreprocess(**fields)


class SplitPreprocess:
    """A model's PIL transform cut in two, with output bitwise equal to the transform per image.

    Called on a PIL image it runs the transform's geometric steps in PIL (the same
    ``torchvision.transforms.functional`` resize and crop the transform calls) and stops at uint8
    ``[H, W, 3]``; :meth:`finish` then does ToTensor's ``/255`` and the Normalize on a whole
    collated batch at once, in the same float32 operations and order. On CPU this replaces a
    handful of small tensor ops per image and model (each one a wake-up of the intra-op thread
    pool, which on a loaded 2-core machine costs up to a scheduler time slice) by four per batch,
    and the batch travels between processes as uint8 (4x less).
    """

    def __init__(self, steps: TensorPreprocess) -> None:
        self.steps = steps
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, img: Any) -> torch.Tensor:
        """uint8 ``[h, w, 3]`` of a PIL RGB image, resized and cropped as the transform does it."""
        import numpy as np
        from torchvision.transforms import functional as F1  # the v1 functional: what Resize / CenterCrop call

        s = self.steps
        if s.resize is not None:
            img = F1.resize(img, list(s.resize), interpolation=s.interpolation, max_size=s.max_size,
                            antialias=s.antialias)
        if s.crop is not None:
            img = F1.center_crop(img, list(s.crop))
        return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))

    def finish(self, batch: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        """float32 ``[N, 3, h, w]`` (laid out as ``memory_format``) of a uint8 ``[N, h, w, 3]`` batch:
        ``x.float() / 255``, then ``.sub_(mean).div_(std)``, as ToTensor + Normalize compute it."""
        n, h, w, c = batch.shape
        out = torch.empty((n, c, h, w), dtype=torch.float32, device=batch.device, memory_format=memory_format)
        out.copy_(batch.permute(0, 3, 1, 2))
        out.div_(255)
        if batch.device not in self._stats:  # F.normalize's mean / std: float32 [3, 1, 1]
            self._stats[batch.device] = tuple(  # type: ignore[assignment]
                torch.tensor(v, dtype=torch.float32, device=batch.device).view(-1, 1, 1)
                for v in (self.steps.mean, self.steps.std))
        mean, std = self._stats[batch.device]
        return out.sub_(mean).div_(std)


def split_preprocess(transform: Any) -> SplitPreprocess | None:
    """:class:`SplitPreprocess` for ``transform``, or None when it has a step that cannot be split
    (the caller then applies the transform itself, per image)."""
    if torch.get_default_dtype() != torch.float32:  # ToTensor converts to the default dtype
        return None
    try:
        steps = tensor_preprocess(transform)
    except UnsupportedTransform:
        return None
    if not isinstance(steps, TensorPreprocess):  # its own tensor form: no PIL steps to split off
        return None
    if len(steps.mean) != 3 or len(steps.std) != 3:
        return None
    return SplitPreprocess(steps)
