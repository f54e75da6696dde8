"""Hugging Face transformers CLIP and SigLIP: ``hf:ORG/REPO`` (the local Hugging Face cache only) and
``hf:PATH`` (a ``save_pretrained`` folder).

The repo's config.json says which model to build (``CLIPModel`` or ``SiglipModel``; any other
``model_type`` is refused), its weights are loaded by transformers' own ``from_pretrained``, and its own
processor (``AutoProcessor``) preprocesses the images and tokenises the text exactly as
``processor(text=..., images=..., padding="max_length")`` does: CLIP pads to its 77 tokens, SigLIP to
its 64. :class:`HFCLIP` puts open_clip's interface around the model (``visual``, ``text``,
``encode_image``, ``encode_text``, ``logit_scale`` and, for SigLIP's sigmoid head, ``logit_bias``), so
every task uses it as it uses an open_clip model. Nothing is ever fetched: a repo must already be in
the cache (``hf download ORG/REPO`` where there is network), and files are read from its cached
snapshot folder with huggingface_hub held offline.

transformers is the optional extra ``clipcompare[hf]``, imported only when an ``hf:`` spec is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipcompare.errors import MissingWeightsError, UserError
from clipcompare.models.build_info import BuildInfo, LoadedModel, single_size, square_size
from clipcompare.models.spec import ModelSpec
from clipcompare.models.weights import (
    error_reason,
    fall_back_or_raise,
    hf_cached,
    hf_hub_offline,
    not_in_hf_cache,
)

log = logging.getLogger(__name__)

# model_type in config.json → the transformers class that is built
MODEL_CLASSES = {"clip": "CLIPModel", "siglip": "SiglipModel"}
CONFIG_NAME = "config.json"
EXTRA = "pip install 'clipcompare[hf]'"


def _transformers(spec: ModelSpec) -> Any:
    try:
        import transformers
    except ImportError:
        raise UserError(f"{spec.name}: hf: models need transformers, the optional extra: {EXTRA}") from None
    return transformers


def is_folder(spec: ModelSpec) -> bool:
    """``hf:PATH`` (the spec holds the absolute folder) rather than ``hf:ORG/REPO``."""
    return spec.arch.startswith("/")


# --------------------------------------------------------------------------- the model, open_clip-style


def split_tokens(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of tokens from :class:`HFTokenizer` (masked positions stored as -id-1)."""
    mask = tokens >= 0
    return torch.where(mask, tokens, -tokens - 1), mask.long()


class HFImageTower(nn.Module):
    """transformers vision model (+ CLIP's projection) → image embeddings, as ``get_image_features``."""

    def __init__(self, vision_model: nn.Module, projection: nn.Module | None, image_size: int) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.projection = projection
        self.image_size = image_size  # the input it was built for, as open_clip's towers carry theirs

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        return self.projection(pooled) if self.projection is not None else pooled


class HFTextTower(nn.Module):
    """transformers text model (+ CLIP's projection) → text embeddings, as ``get_text_features``.

    ``uses_mask``: the repo's tokenizer returns an attention mask, which the model is then called with
    (as ``model(**processor(...))`` calls it); :class:`HFTokenizer` folds it into the token tensor.
    """

    def __init__(self, text_model: nn.Module, projection: nn.Module | None, uses_mask: bool) -> None:
        super().__init__()
        self.text_model = text_model
        self.projection = projection
        self.uses_mask = uses_mask

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        ids, mask = split_tokens(tokens) if self.uses_mask else (tokens, None)
        pooled = self.text_model(input_ids=ids, attention_mask=mask).pooler_output
        return self.projection(pooled) if self.projection is not None else pooled


class HFCLIP(nn.Module):
    """A transformers ``CLIPModel`` / ``SiglipModel`` with open_clip's interface (its submodules, not copies:
    the parameters are the transformers model's, every one of them).

    ``logit_scale`` is the learned log-scale; SigLIP's ``logit_bias`` makes its logits
    ``exp(logit_scale)·cos + logit_bias``, the log-odds of its sigmoid head.
    """

    def __init__(self, model: nn.Module, *, uses_mask: bool) -> None:
        super().__init__()
        config = model.config
        self.model_type = str(config.model_type)
        self.visual = HFImageTower(model.vision_model, getattr(model, "visual_projection", None),
                                   int(config.vision_config.image_size))
        self.text = HFTextTower(model.text_model, getattr(model, "text_projection", None), uses_mask)
        self.logit_scale = model.logit_scale
        if isinstance(getattr(model, "logit_bias", None), nn.Parameter):
            self.logit_bias = model.logit_bias

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.visual(image)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.text(text)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None):
        """As open_clip's CLIP / SigLIP: normalised features, exp(logit_scale) (and logit_bias for SigLIP)."""
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        if hasattr(self, "logit_bias"):
            return image_features, text_features, self.logit_scale.exp(), self.logit_bias
        return image_features, text_features, self.logit_scale.exp()


class HFTokenizer:
    """The repo's tokenizer as open_clip's tokenizer interface: texts → LongTensor [N, max_length].

    Called as the processor calls it with ``padding="max_length"`` (CLIP: 77 tokens, SigLIP: 64), and
    truncated there as open_clip truncates (the processor would fail on a longer text instead). When
    the tokenizer also returns an attention mask, masked positions are stored as ``-id - 1`` so one
    tensor carries both (it is sliced, batched and moved like any token tensor); :class:`HFTextTower`
    takes them apart again.
    """

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.context_length = max_length
        self.uses_mask = "attention_mask" in getattr(tokenizer, "model_input_names", ())

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        enc = self.tokenizer(texts, padding="max_length", max_length=context_length or self.max_length,
                             truncation=True, return_tensors="pt")
        ids = enc["input_ids"].long()
        mask = enc.get("attention_mask") if self.uses_mask else None
        return ids if mask is None else torch.where(mask.bool(), ids, -ids - 1)

    def describe(self) -> str:
        return (f"{type(self.tokenizer).__name__}, padding max_length to {self.max_length} tokens"
                + (", with its attention mask" if self.uses_mask else ", no attention mask"))


class HFImagePreprocess:
    """The repo's image processor on one PIL image → float tensor [3, H, W], exactly its ``pixel_values``."""

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, img: Any) -> torch.Tensor:
        return self.image_processor(images=img, return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        return f"HFImagePreprocess({type(self.image_processor).__name__})"

    def tensor_preprocess(self) -> HFTensorPreprocess:
        """The ``--decode gpu`` form: the same processor on decoded uint8 tensors (its torchvision backend
        turns a PIL image into exactly such a tensor first, so only the JPEG decoder can differ)."""
        from clipcompare.data.tensor_preprocess import UnsupportedTransform

        if getattr(self.image_processor, "backend", None) != "torchvision":
            raise UnsupportedTransform(f"{type(self.image_processor).__name__} with the "
                                       f"{getattr(self.image_processor, 'backend', '?')} backend works on PIL images")
        return HFTensorPreprocess(self.image_processor)


class HFTensorPreprocess:
    """The repo's image processor on uint8 ``[3, H, W]`` tensors of one device → float ``[N, 3, h, w]`` there
    (``--decode gpu``: what :class:`~clipcompare.data.tensor_preprocess.TensorPreprocess` is for the others)."""

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        if not images:
            raise ValueError("no images")
        out = self.image_processor(images=list(images), return_tensors="pt", device=images[0].device)
        return out["pixel_values"]

    def describe(self) -> dict[str, Any]:
        """For run.json: the processor's own settings."""
        ip = self.image_processor
        return {"processor": type(ip).__name__, "size": dict(ip.size or {}), "crop_size":
                dict(ip.crop_size or {}) if getattr(ip, "do_center_crop", False) else None,
                "resample": str(getattr(ip, "resample", None)), "mean": list(ip.image_mean), "std": list(ip.image_std)}


# --------------------------------------------------------------------------- finding the files


def _open_clip_hint(has_open_clip_config: bool, spec: ModelSpec) -> str:
    if not has_open_clip_config:
        return ""
    form = f"clip:local-dir:{spec.arch}" if is_folder(spec) else f"clip:hf-hub:{spec.arch}"
    return f"; it holds open_clip_config.json: an open_clip model, load it as {form}"


def _find_folder(spec: ModelSpec) -> tuple[Path, str]:
    """(the folder holding config.json, where it is, for messages): the folder itself, or the cached
    snapshot of the repo's main revision."""
    if is_folder(spec):
        folder = Path(spec.arch)
        if not folder.is_dir():
            raise UserError(f"{spec.name}: folder not found: {folder}")
        if not (folder / CONFIG_NAME).is_file():
            raise UserError(f"{spec.name}: {folder} has no {CONFIG_NAME}: not a transformers save_pretrained folder"
                            + _open_clip_hint((folder / "open_clip_config.json").is_file(), spec))
        return folder, str(folder)
    repo = spec.arch
    config = hf_cached(repo, [CONFIG_NAME])
    if config is None:
        raise not_in_hf_cache(spec.name, repo, f"{CONFIG_NAME}, the weights and the processor files", CONFIG_NAME,
                              _open_clip_hint(hf_cached(repo, ["open_clip_config.json"]) is not None, spec))
    snapshot = Path(config).parent
    return snapshot, f"{repo} (cached snapshot {snapshot.name[:12]})"


def _weights_file(folder: Path) -> str | None:
    """The weights transformers loads from ``folder`` (safetensors first, as it prefers them), or None."""
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

    for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME):
        if (folder / name).is_file():
            return str(folder / name)
    return None


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """huggingface_hub offline, and transformers' progress bars and notes (the load report, config
    remarks) off while a model is read: failures reach the user as our one line, not as its log."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with hf_hub_offline():
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------- loading


class _Repo:
    """A repo's / folder's config and processor, read without any network (weights not yet)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.transformers = _transformers(spec)
        if spec.tag is not None or spec.path is not None:
            raise UserError(f"{spec.name}: the repo holds its own weights; a weights file (=FILE, --weights) or @TAG "
                            "makes no sense with it")
        self.spec = spec
        self.folder, self.where = _find_folder(spec)
        with _quiet_transformers():
            try:
                self.config = self.transformers.AutoConfig.from_pretrained(self.folder, local_files_only=True)
            except Exception as exc:
                raise UserError(f"{spec.name}: cannot read {CONFIG_NAME} of {self.where}: {error_reason(exc)}") from None
            model_type = getattr(self.config, "model_type", None)
            if model_type not in MODEL_CLASSES:
                archs = ", ".join(getattr(self.config, "architectures", None) or []) or "no architectures listed"
                raise UserError(f"{spec.name}: {self.where} is a transformers {model_type!r} model ({archs}); hf: "
                                f"loads {' and '.join(MODEL_CLASSES.values())} only")
            self.image_processor, tokenizer = _processor(spec, self.transformers, self.folder, self.where)
        text_cfg = self.config.text_config
        max_length = int(getattr(tokenizer, "model_max_length", 0) or 0)
        if not 0 < max_length <= text_cfg.max_position_embeddings:  # no sane limit saved: the model's own
            max_length = int(text_cfg.max_position_embeddings)
        self.tokenizer = HFTokenizer(tokenizer, max_length)
        self.model_class = getattr(self.transformers, MODEL_CLASSES[model_type])

    def random_model(self) -> HFCLIP:
        """The architecture with transformers' own random init (seeded by the caller)."""
        with _quiet_transformers():
            model = self.model_class(self.config)
        return HFCLIP(model.eval(), uses_mask=self.tokenizer.uses_mask)

    def pretrained_model(self, weights_file: str) -> HFCLIP:
        """``from_pretrained`` of the folder; weights that do not fit the config are one line."""
        spec, where = self.spec, self.where
        try:
            with _quiet_transformers():
                # float32 as every other family loads (the precision command casts); transformers would
                # otherwise keep the checkpoint's own dtype
                model, info = self.model_class.from_pretrained(self.folder, local_files_only=True, dtype=torch.float32,
                                                               output_loading_info=True)
        except Exception as exc:
            raise UserError(f"{spec.name}: transformers cannot load {where}: {error_reason(exc)}") from None
        absent = list(info.get("missing_keys") or []) + [m[0] if isinstance(m, tuple) else str(m)
                                                          for m in info.get("mismatched_keys") or []]
        if absent:
            raise UserError(f"{spec.name}: the weights in {where} do not fit its {CONFIG_NAME} ({len(absent)} tensors "
                            f"missing or of another shape, e.g. {absent[0]})")
        return HFCLIP(model.eval(), uses_mask=self.tokenizer.uses_mask)


def load_hf(spec: ModelSpec, *, allow_random: bool = False) -> LoadedModel:
    """``hf:ORG/REPO`` / ``hf:PATH``: the transformers CLIPModel / SiglipModel its config.json names, with
    its own processor; random weights (seeded by the caller) only with ``allow_random`` when the folder
    has a config but no weights."""
    repo = _Repo(spec)
    weights_file = _weights_file(repo.folder)
    missing: str | None = None
    if weights_file is None:
        err = MissingWeightsError(
            f"weights for {spec.name} not found: {repo.where} has {CONFIG_NAME} but no model.safetensors or "
            "pytorch_model.bin" + ("" if is_folder(spec) else f"; fetch them with `hf download {spec.arch}`"),
            "model.safetensors")
        fall_back_or_raise(err, allow_random)
        missing = err.filename
    model = repo.random_model() if weights_file is None else repo.pretrained_model(weights_file)
    build = hf_build_info(model, repo.config, repo.image_processor, repo.tokenizer, repo.where, weights_file is not None)
    return LoadedModel(spec, model, HFImagePreprocess(repo.image_processor), repo.tokenizer,
                       pretrained=weights_file is not None, weights_file=weights_file, missing_weights=missing,
                       build=build)


def build_hf_untrained(spec: ModelSpec) -> tuple[HFCLIP, HFTokenizer]:
    """The model of ``spec`` with random weights and its tokenizer, reading only its config and processor
    (a trained checkpoint holds every weight of the text tower it froze)."""
    repo = _Repo(spec)
    return repo.random_model(), repo.tokenizer


def _processor(spec: ModelSpec, transformers: Any, folder: Path, where: str) -> tuple[Any, Any]:
    """(image processor, tokenizer) of the repo's own processor."""
    try:
        processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise UserError(f"{spec.name}: cannot load the processor (image processor and tokenizer) of {where}: "
                        f"{error_reason(exc)}") from None
    image_processor = getattr(processor, "image_processor", None)
    tokenizer = getattr(processor, "tokenizer", None)
    if image_processor is None or tokenizer is None:
        lacking = " and ".join(n for n, v in (("an image processor", image_processor), ("a tokenizer", tokenizer))
                               if v is None)
        raise UserError(f"{spec.name}: {where} has no {lacking} (processor_config.json / preprocessor_config.json, "
                        "tokenizer files): the repo's own processor preprocesses and tokenises")
    return image_processor, tokenizer


def _size_fields(ip: Any) -> tuple[int | list[int], int | list[int], str]:
    """(resize, crop, resize mode) of an image processor: ``shortest_edge`` → the shorter side, then the
    centre crop; ``height``/``width`` → squashed to that size."""
    size = dict(getattr(ip, "size", None) or {})
    if size.get("shortest_edge"):
        resize: int | list[int] = int(size["shortest_edge"])
        mode = "shortest"
    elif size.get("height") and size.get("width"):
        resize, mode = [int(size["height"]), int(size["width"])], "squash"
    else:
        resize, mode = single_size(list(size.values()) or [0]), "other: " + ", ".join(size)
    if not getattr(ip, "do_resize", True):
        mode = "none"
    crop_size = dict(getattr(ip, "crop_size", None) or {})
    if getattr(ip, "do_center_crop", False) and crop_size.get("height"):
        crop = square_size([int(crop_size["height"]), int(crop_size["width"])])
    else:
        crop = resize
    return resize, crop, mode


def hf_build_info(model: HFCLIP, config: Any, ip: Any, tokenizer: HFTokenizer, where: str,
                  pretrained: bool) -> BuildInfo:
    """What the repo's config and processor decided, read back from them and the built model."""
    resize, crop, mode = _size_fields(ip)
    from transformers.image_utils import PILImageResampling

    resample = getattr(ip, "resample", None)
    try:
        interpolation = PILImageResampling(resample).name.lower()
    except ValueError:  # a torchvision InterpolationMode, or None
        interpolation = str(getattr(resample, "value", resample))
    backend = getattr(ip, "backend", "")
    acts = sorted({str(getattr(config.text_config, "hidden_act", "?")), str(getattr(config.vision_config,
                                                                                   "hidden_act", "?"))})
    scale = float(model.logit_scale.detach().float().exp())
    origin = "learned, from the checkpoint" if pretrained else "random init"
    logit = f"{origin} (exp = {scale:.4g})"
    if hasattr(model, "logit_bias"):
        logit += f", bias {float(model.logit_bias.detach().float()):.4g} (sigmoid head)"
    return BuildInfo(
        architecture=f"transformers {MODEL_CLASSES[config.model_type]}",
        activation=", ".join(acts),
        activation_source=f"hidden_act in {CONFIG_NAME} of {where}",
        logit_scale=logit,
        resize=resize, crop=crop,
        interpolation=interpolation + (f" ({backend} backend)" if backend else ""),
        resize_mode=mode,
        mean=tuple(float(x) for x in ip.image_mean), std=tuple(float(x) for x in ip.image_std),
        preprocess_source=f"{type(ip).__name__} of {where}",
        tokenizer=f"{tokenizer.describe()} ({where})",
    )
