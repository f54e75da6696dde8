"""The one interface evaluation uses for both model kinds.

A :class:`Classifier` turns a batch of preprocessed images into logits over a :class:`ClassSet`.
A supervised model slices its 1000 ImageNet logits to the set's ImageNet indices (ImageNet-R/-A
masking, the 10-class seed comparison, a user's ImageNet labels); a CLIP model builds (or loads)
its zero-shot head for the set's names. Callers never branch on the model kind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from clipcompare.classes import ClassSet
from clipcompare.errors import UserError
from clipcompare.models.build_info import LoadedModel, Preprocess
from clipcompare.models.loading import load_model
from clipcompare.models.spec import ModelSpec


class Classifier(ABC):
    """A model that scores images against a :class:`ClassSet`."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.spec: ModelSpec = loaded.spec
        self.name: str = loaded.spec.name
        self.preprocess: Preprocess = loaded.preprocess

    @property
    def pretrained(self) -> bool:
        return self.loaded.pretrained

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Classifier":
        self.model.to(device=device, dtype=dtype)
        return self

    @abstractmethod
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The image representation before the class head."""

    @abstractmethod
    def logits(self, images: torch.Tensor, classes: ClassSet) -> torch.Tensor:
        """Logits [B, len(classes)] for a batch of preprocessed images."""

    def supports(self, classes: ClassSet) -> str | None:
        """None if ``classes`` can be scored, else the reason why not."""
        return None

    def prepare(self, classes: ClassSet) -> None:
        """Do the one-off work for ``classes`` now (CLIP: its zero-shot head), so timed loops exclude it."""


class SupervisedClassifier(Classifier):
    """A 1000-way ImageNet classifier; its logits are sliced to the requested classes."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__(loaded)
        # built once per class set and device: a host→device copy per batch would stall CUDA
        self._index: dict[tuple[str, torch.device], torch.Tensor] = {}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def supports(self, classes: ClassSet) -> str | None:
        outputs = getattr(self.model, "num_classes", 1000)  # timm models say how many logits they have
        if outputs != 1000:
            return f"{self.name} has {outputs} outputs, not the 1000 ImageNet classes its logits are read as"
        if not classes.imagenet_scorable:
            return f"{self.name} only knows the 1000 ImageNet classes and these labels are not all ImageNet classes"
        return None

    def logits(self, images: torch.Tensor, classes: ClassSet) -> torch.Tensor:
        reason = self.supports(classes)
        if reason:
            raise UserError(reason)
        out = self.model(images)
        key = (classes.key, out.device)
        if classes.imagenet_groups is not None:
            # each class scored by its best logit among its group (ObjectNet): gather [B, C, G] and take the max;
            # groups are padded with their own first index, which cannot change a max
            if key not in self._index:
                width = max(len(g) for g in classes.imagenet_groups)
                self._index[key] = torch.as_tensor([list(g) + [g[0]] * (width - len(g))
                                                    for g in classes.imagenet_groups], device=out.device)
            index = self._index[key]
            return out[:, index].amax(dim=-1)
        if key not in self._index:
            self._index[key] = torch.as_tensor(classes.imagenet_indices, device=out.device)
        return out.index_select(1, self._index[key])


class ClipClassifier(Classifier):
    """A CLIP model used zero-shot: logits = the model's logit scale × cosine similarity (+ the logit bias of
    a SigLIP-style sigmoid head)."""

    def __init__(self, loaded: LoadedModel, templates: str = "openai", cache_dir: Path | None = None) -> None:
        from clipcompare.zeroshot import load_templates

        super().__init__(loaded)
        self.template_set = templates
        self.templates = load_templates(templates)
        self.cache_dir = cache_dir
        self._heads: dict[str, torch.Tensor] = {}
        self.tokenizer = loaded.tokenizer

    @property
    def logit_scale(self) -> torch.Tensor:
        """exp(learned log-scale), as a 0-d tensor on the model's device (no host sync per batch)."""
        return self.model.logit_scale.exp()

    @property
    def logit_bias(self) -> torch.Tensor | None:
        """SigLIP's learned bias (its logits are scale·cos + bias, the log-odds of a sigmoid), else None."""
        bias = getattr(self.model, "logit_bias", None)
        return bias if isinstance(bias, torch.Tensor) else None

    @property
    def sigmoid_head(self) -> bool:
        """Whether the model was trained with a sigmoid loss (SigLIP): its logits are per-class log-odds."""
        return self.logit_bias is not None

    @property
    def model_id(self) -> str:
        """Identity of model, weights *and* text-tower activation, for the head cache.

        The same weights built with GELU and with QuickGELU give different heads, so a head cached
        under one must never be served for the other.
        """
        from clipcompare.models.hashing import model_identity

        return model_identity(self.name, self.model)

    def head(self, classes: ClassSet) -> torch.Tensor:
        """Zero-shot weights [D, C] for ``classes`` (memory, then disk cache, then built)."""
        from clipcompare.zeroshot import cached_head

        if classes.key not in self._heads:
            templates = self.templates
            if self.template_set == "dataset" and classes.templates:  # the set's own (CLIP_benchmark's file)
                templates = list(classes.templates)
            self._heads[classes.key] = cached_head(
                self.model, self.tokenizer, classes.names, templates,
                model_id=self.model_id, cache_dir=self.cache_dir, device=self.device,
            )
        return self._heads[classes.key]

    def prepare(self, classes: ClassSet) -> None:
        self.head(classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(images).float(), dim=-1)

    def logits(self, images: torch.Tensor, classes: ClassSet) -> torch.Tensor:
        head = self.head(classes)
        feats = self.features(images)
        logits = self.logit_scale.float() * feats @ head.to(feats.dtype)
        bias = self.logit_bias
        return logits if bias is None else logits + bias.float()

    def cosine(self, images: torch.Tensor, classes: ClassSet) -> torch.Tensor:
        """Raw cosine similarities (no temperature), for ``--raw-cosine``."""
        head = self.head(classes)
        feats = self.features(images)
        return feats @ head.to(feats.dtype)


def create_classifier(
    spec: ModelSpec | str,
    *,
    templates: str = "openai",
    cache_dir: Path | None = None,
    allow_random: bool = False,
    device: str | torch.device = "cpu",
) -> Classifier:
    """Explicit factory: spec → the right :class:`Classifier`, weights loaded."""
    from clipcompare.models.spec import parse_spec

    if isinstance(spec, str):
        spec = parse_spec(spec)
    loaded = load_model(spec, allow_random=allow_random, device=device)
    return wrap_loaded(loaded, templates=templates, cache_dir=cache_dir)


def create_classifiers(
    specs: Sequence[ModelSpec | str],
    *,
    templates: str = "openai",
    cache_dir: Path | None = None,
    allow_random: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[Classifier]:
    """:func:`create_classifier` for each spec, cast to ``dtype`` (the cast ``precision`` measures).
    Random inits (``allow_random``) are seeded, so a dry run gets the same weights on every run."""
    from clipcompare.models.loading import seeded_init

    classifiers = []
    for spec in specs:
        with seeded_init():
            clf = create_classifier(spec, templates=templates, cache_dir=cache_dir, allow_random=allow_random,
                                    device=device)
        if dtype != torch.float32:
            clf.model.to(dtype=dtype)
        classifiers.append(clf)
    return classifiers


def wrap_loaded(loaded: LoadedModel, *, templates: str = "openai", cache_dir: Path | None = None) -> Classifier:
    """The :class:`Classifier` for an already loaded model (CLIP, hf: or trained checkpoint → zero-shot, else
    supervised)."""
    if not loaded.spec.supervised:
        return ClipClassifier(loaded, templates=templates, cache_dir=cache_dir)
    return SupervisedClassifier(loaded)
