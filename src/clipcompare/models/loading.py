"""Load supervised (torchvision) and CLIP (open_clip) models from specs.

Pretrained weights come from the usual caches (torch hub, Hugging Face hub, ``~/.cache/clip``) or
are downloaded by torchvision/open_clip; local files are loaded directly. When weights are neither
cached nor downloadable, :class:`MissingWeightsError` names the file, where it comes from and
where to put it. With ``allow_random=True`` the architecture is built with random weights instead
(``LoadedModel.pretrained`` is then False), which is what ``inspect`` and the tests use.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import torch
from torch import nn

from clipcompare.errors import MissingWeightsError, UserError
from clipcompare.models.spec import DEFAULT_CLIP_TAG, ModelSpec

log = logging.getLogger(__name__)

Preprocess = Callable[[Any], torch.Tensor]


@dataclass
class LoadedModel:
    """A model with the preprocessing that belongs to its weights (and a tokenizer for CLIP)."""

    spec: ModelSpec
    model: nn.Module
    preprocess: Preprocess
    tokenizer: Callable[..., torch.Tensor] | None = None
    pretrained: bool = True
    weights_file: str | None = None
    missing_weights: str | None = None  # the file that was needed, when random weights stand in


def _fall_back_or_raise(err: MissingWeightsError, allow_random: bool, cause: BaseException | None = None) -> None:
    """Raise ``err``, or (``allow_random``) log it and let the caller build random weights."""
    if not allow_random:
        raise err from cause
    log.warning("%s; using random initialisation", err)


_CONFIGS_REGISTERED = False


class _DropOpenClipRandomInitWarning(logging.Filter):
    """open_clip logs "No pretrained weights loaded ... initialized randomly" on the root logger
    whenever we build an architecture on purpose; our own warning already says why, and better."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded for model")


logging.getLogger().addFilter(_DropOpenClipRandomInitWarning())


def register_tiny_configs() -> None:
    """Make the package's tiny open_clip configs (``tiny-RN-quickgelu``, ``tiny-ViT``) loadable.

    They are real CLIP architectures at toy size, for tests and CPU dry runs of every command.
    """
    global _CONFIGS_REGISTERED
    if not _CONFIGS_REGISTERED:
        import open_clip

        open_clip.add_model_config(Path(__file__).parent / "configs")
        _CONFIGS_REGISTERED = True


def load_model(spec: ModelSpec, *, allow_random: bool = False, device: str | torch.device = "cpu") -> LoadedModel:
    """Load either family; the single entry point the rest of the package uses."""
    loader = {"clip": load_clip, "trained": load_trained_checkpoint}.get(spec.family, load_torchvision)
    loaded = loader(spec, allow_random=allow_random)
    loaded.model.eval().to(device)
    return loaded


def load_trained_checkpoint(spec: ModelSpec, *, allow_random: bool = False) -> LoadedModel:
    """A ``clipcompare train`` checkpoint: open_clip's interface, its own resize + CLIP normalisation,
    the text model's tokenizer. Holds its weights, so nothing is downloaded (``allow_random`` unused)."""
    from clipcompare.train.model import Preprocess, load_trained

    assert spec.path is not None
    model = load_trained(spec.path)
    return LoadedModel(spec, model, Preprocess(model.config.image_size), model.tokenizer, pretrained=True,
                       weights_file=str(spec.path))


# --------------------------------------------------------------------------- torchvision


def _torchvision_weights(arch: str, tag: str | None):
    from torchvision import models

    try:
        enum = models.get_model_weights(arch)
    except (ValueError, KeyError):
        known = sorted(models.list_models(module=models))
        close = difflib.get_close_matches(arch, known, n=5, cutoff=0.5) or ["resnet50", "vit_b_16"]
        raise UserError(f"unknown torchvision classification model {arch!r}; closest: {', '.join(close)}") from None
    if tag is None:
        return enum.DEFAULT
    try:
        return enum[tag]
    except KeyError:
        raise UserError(
            f"{arch} has no weights {tag!r}; available: {', '.join(w.name for w in enum)}"
        ) from None


def load_torchvision(spec: ModelSpec, *, allow_random: bool = False) -> LoadedModel:
    """torchvision classifier with its weights' own transforms (V1: 256→224, V2: 232→224)."""
    from torchvision import models

    weights = _torchvision_weights(spec.arch, spec.tag or ("IMAGENET1K_V1" if spec.path else None))
    model = models.get_model(spec.arch, weights=None)
    preprocess = weights.transforms()
    if spec.path is not None:
        state = _load_state_dict_file(spec.path)
        _load_strict(model, state, spec.path)
        return LoadedModel(spec, model, preprocess, pretrained=True, weights_file=str(spec.path))
    filename = os.path.basename(weights.url)
    target = Path(torch.hub.get_dir()) / "checkpoints" / filename
    try:
        if not target.is_file():
            _require_network(weights.url)
        state = weights.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # no cache and no network: any download error means the same to the user
        err = MissingWeightsError(
            f"weights for {spec.name} not found: need {filename} (from {weights.url}); "
            f"put it at {target} or pass {spec.arch}=/path/{filename} (or --weights PATH)",
            filename,
        )
        _fall_back_or_raise(err, allow_random, exc)
        return LoadedModel(spec, model, preprocess, pretrained=False, missing_weights=filename)
    model.load_state_dict(state)
    return LoadedModel(spec, model, preprocess, pretrained=True, weights_file=str(target))


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read weights file {path}: {exc}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UserError(f"{path} does not hold a state_dict")
    # checkpoints saved from DataParallel/DDP prefix every key with "module."
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        raise UserError(f"{path} does not match the model's architecture ({first})") from None


# --------------------------------------------------------------------------- open_clip


def _is_torchscript(path: Path) -> bool:
    """OpenAI's released .pt files are TorchScript archives (zip with a ``code/`` folder)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in n or n.startswith("code/") for n in zf.namelist())


def _clip_arch(spec: ModelSpec, quick_gelu: bool) -> tuple[str, bool]:
    """The open_clip config name and whether QuickGELU must be forced onto it."""
    import open_clip

    register_tiny_configs()
    arch = spec.arch
    if arch not in open_clip.list_models():
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=5, cutoff=0.5) or ["RN50", "ViT-B-32"]
        raise UserError(f"unknown open_clip model {arch!r}; closest: {', '.join(close)} (all: open_clip.list_models())")
    force = quick_gelu and not arch.endswith("-quickgelu")
    return arch, force


def _cached_clip_file(cfg: dict) -> str | None:
    """A tag's weights already on disk: ~/.cache/clip/<name>.pt (OpenAI's clip package and
    open_clip's URL downloads) or the Hugging Face cache, looked up without any network."""
    url = cfg.get("url", "")
    if url:
        candidate = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if candidate.is_file():
            return str(candidate)
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

        repo, filename = os.path.split(hub)
        for name in ([filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]):
            found = try_to_load_from_cache(repo, name)
            if isinstance(found, str):
                return found
    return None


def _require_network(url: str) -> None:
    """Fail at once when the download host does not resolve.

    Without this, huggingface_hub retries with back-off for ~45 s per file before giving up,
    which is what an offline user would otherwise wait for every missing model.
    """
    if os.environ.get("HF_HUB_OFFLINE") == "1" and "huggingface" in url:
        raise OSError("HF_HUB_OFFLINE=1")
    host = urlparse(url).hostname or url
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        raise OSError(f"cannot reach {host}: {exc}") from exc


def load_clip(spec: ModelSpec, *, allow_random: bool = False) -> LoadedModel:
    """open_clip model + preprocess + tokenizer; QuickGELU forced for weights trained with it."""
    import open_clip

    register_tiny_configs()
    tag_cfg: dict = {}
    weights_file: str | None = None
    torchscript = False
    if spec.path is not None:
        if not spec.path.is_file():
            raise UserError(f"weights file not found: {spec.path}")
        torchscript = _is_torchscript(spec.path)
        # OpenAI checkpoints were trained with QuickGELU; a plain config would load but be wrong.
        quick = torchscript or spec.arch.endswith("-quickgelu")
        weights_file = str(spec.path)
    else:
        tags = open_clip.list_pretrained_tags_by_model(spec.arch)
        if spec.tag is None and tags:
            spec = replace(spec, tag=DEFAULT_CLIP_TAG if DEFAULT_CLIP_TAG in tags else tags[0])
        if spec.tag is not None and spec.tag not in tags and spec.arch in open_clip.list_models():
            raise UserError(f"{spec.arch} has no pretrained tag {spec.tag!r}; available: {', '.join(tags) or 'none'}")
        if spec.tag is not None:
            tag_cfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag) or {}
        quick = bool(tag_cfg.get("quick_gelu", False))
    arch, force = _clip_arch(spec, quick)

    missing: str | None = None
    if weights_file is None and not tag_cfg:
        _fall_back_or_raise(MissingWeightsError(
            f"{spec.name} has no pretrained weights in open_clip; pass clip:{spec.arch}=/path/weights"), allow_random)
    elif weights_file is None:
        weights_file = _cached_clip_file(tag_cfg)
        try:
            if weights_file is None:
                # open_clip prefers the HF hub when huggingface_hub is installed
                prefers_hub = bool(tag_cfg.get("hf_hub")) and open_clip.pretrained.has_hf_hub()
                _require_network("https://huggingface.co" if prefers_hub else tag_cfg.get("url", ""))
                weights_file = open_clip.download_pretrained(tag_cfg)
        except Exception as exc:
            err = _missing_clip_weights(spec, tag_cfg)
            _fall_back_or_raise(err, allow_random, exc)
            missing = err.filename

    # TorchScript archives cannot be read with weights_only=True; torch.load hands them to
    # torch.jit.load, which restores tensors and TorchScript code but runs no pickled Python.
    kwargs: dict[str, Any] = dict(force_quick_gelu=force, weights_only=not torchscript)
    if tag_cfg:
        # preprocessing (mean/std/interpolation) belongs to the tag even when we load the file ourselves
        kwargs.update(
            image_mean=tag_cfg.get("mean"), image_std=tag_cfg.get("std"),
            image_interpolation=tag_cfg.get("interpolation"), image_resize_mode=tag_cfg.get("resize_mode"),
        )
    try:
        with warnings.catch_warnings():
            if torchscript:  # the format OpenAI released; torch's deprecation notes are not the user's to act on
                warnings.filterwarnings("ignore", message=".*TorchScript archive.*")
                warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated.*", category=FutureWarning)
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=weights_file, **kwargs)
    except RuntimeError as exc:
        if weights_file is None:
            raise
        raise UserError(f"{weights_file} does not match {arch}: {str(exc).splitlines()[0]}") from None
    tokenizer = open_clip.get_tokenizer(arch)
    return LoadedModel(spec, model, preprocess, tokenizer, pretrained=weights_file is not None,
                       weights_file=weights_file, missing_weights=missing)


def _missing_clip_weights(spec: ModelSpec, cfg: dict) -> MissingWeightsError:
    url = cfg.get("url", "")
    hub = cfg.get("hf_hub", "")
    sources = " or ".join(s for s in (url, f"Hugging Face hub {hub.rstrip('/')}" if hub else "") if s)
    filename = os.path.basename(url) if url else "open_clip_pytorch_model.bin"
    where = Path(os.path.expanduser("~/.cache/clip")) / filename if url else "the Hugging Face cache (HF_HOME)"
    return MissingWeightsError(
        f"weights for {spec.name} not found: need {filename} (from {sources or 'open_clip'}); "
        f"put it at {where} or pass clip:{spec.arch}=/path/{filename} (or --weights PATH)",
        filename,
    )
