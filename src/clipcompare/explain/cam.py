"""Class-activation maps with pytorch-grad-cam, batched, for any model that gives logits over a class set.

A supervised model's logits are its ImageNet logits sliced to the classes; a CLIP-like model's are the
zero-shot logits, ``logit_scale · cos(image embedding, class text embedding)`` from the very head
``classify`` uses. :class:`ClassLogits` makes either a plain ``images → logits`` module, which is all
pytorch-grad-cam asks for.

Speed: Grad-CAM needs the gradient of one logit with respect to the target layer's activation, not
with respect to any weight nor any earlier layer. :func:`gradients_from` freezes the weights and
cuts the graph at the target layer, so the forward up to it records nothing and the backward runs
from the logit to that layer only. The gradients at the target layer are unchanged, so the maps are
exactly pytorch-grad-cam's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from clipcompare.classes import ClassSet
from clipcompare.errors import UserError
from clipcompare.explain.layers import TargetLayer
from clipcompare.models.classifier import Classifier

METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "scorecam", "eigencam")


def cam_class(method: str) -> type:
    """pytorch-grad-cam's class for a method name as the CLI spells it."""
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM

    classes = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "scorecam": ScoreCAM, "eigencam": EigenCAM}
    if method not in classes:
        raise UserError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    return classes[method]


class ClassLogits(nn.Module):
    """A :class:`Classifier` restricted to ``classes`` as the ``images → logits [B, C]`` module grad-cam needs."""

    def __init__(self, classifier: Classifier, classes: ClassSet) -> None:
        super().__init__()
        self.model = classifier.model  # registered, so parameters() and eval() reach it
        self._classifier = classifier
        self._classes = classes
        classifier.prepare(classes)  # the zero-shot head, built (or read from the cache) outside any timing

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._classifier.logits(images, self._classes).float()


@contextlib.contextmanager
def gradients_from(model: nn.Module, layer: nn.Module) -> Iterator[None]:
    """While inside: weights frozen, and ``layer``'s output a fresh leaf that requires grad, so autograd
    records only what follows ``layer``. The weights' flags are restored on the way out."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)

    def cut(_module: nn.Module, _inputs: object, output: object) -> object:
        if isinstance(output, torch.Tensor):
            return output.detach().requires_grad_(True)
        return None

    # prepended: grad-cam's own hook (registered later) must see the leaf to hook its gradient
    handle = layer.register_forward_hook(cut, prepend=True)
    try:
        yield
    finally:
        handle.remove()
        for p, flag in flags:
            p.requires_grad_(flag)


def compute_maps(
    logits_model: nn.Module,
    layer: TargetLayer,
    batches: Iterator[torch.Tensor] | Sequence[torch.Tensor],
    targets: Sequence[int | None],
    *,
    method: str = "gradcam",
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, torch.Tensor]:
    """Maps [N, H, W] (grad-cam's own output: at the input size, each scaled to [0, 1]) and logits [N, C].

    ``targets[i]`` is the class to explain for image i, or None for the model's top-1. Images come in
    ``batches`` (preprocessed); one forward per batch serves both the map and the logits.
    """
    cam_type = cam_class(method)
    maps: list[np.ndarray] = []
    logits: list[torch.Tensor] = []
    logits_model.eval()
    # not grad-cam's `with`: its __exit__ swallows an IndexError (printing it), which would hide a bug
    with gradients_from(logits_model, layer.module), _quiet(method):
        cam = cam_type(model=logits_model, target_layers=[layer.module], reshape_transform=layer.reshape)
        try:
            _run(cam, logits_model, batches, targets, device, maps, logits, on_batch)
        finally:
            cam.activations_and_grads.release()
    if not maps:
        return np.zeros((0, 0, 0), dtype=np.float32), torch.zeros(0, 0)
    return np.concatenate(maps), torch.cat(logits)


def _quiet(method: str) -> contextlib.AbstractContextManager:
    """ScoreCAM draws a tqdm bar per image on stderr; the CLI's output is ours to print."""
    import io

    return contextlib.redirect_stderr(io.StringIO()) if method == "scorecam" else contextlib.nullcontext()


def _run(cam, logits_model: nn.Module, batches, targets: Sequence[int | None], device, maps: list, logits: list,
         on_batch: Callable[[int], None] | None) -> None:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    start = 0
    for batch in batches:
        batch = batch.to(device)
        wanted = list(targets[start:start + len(batch)])
        if all(t is None for t in wanted):
            chosen = None  # grad-cam takes each image's argmax of the very forward it runs
        else:
            if any(t is None for t in wanted):  # a mix: the top-1 of the others first
                with torch.no_grad():
                    top = logits_model(batch).argmax(dim=-1).tolist()
                wanted = [t if t is not None else top[i] for i, t in enumerate(wanted)]
            chosen = [ClassifierOutputTarget(int(t)) for t in wanted]
        out = cam(input_tensor=batch, targets=chosen)
        maps.append(np.asarray(out, dtype=np.float32))
        logits.append(cam.outputs.detach().float().cpu())
        start += len(batch)
        if on_batch is not None:
            on_batch(start)
