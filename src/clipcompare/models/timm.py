"""timm classifiers: ``timm:resnet50.a1_in1k``, ``timm:resnet50`` (timm's default tag), ``timm:ARCH.TAG=FILE``.

The model is built by ``timm.create_model`` without weights, and the pretrained weights are read from
where timm keeps them, without network: the Hugging Face cache (``timm/ARCH.TAG``, ``model.safetensors``
or ``pytorch_model.bin``) or torch hub's checkpoint cache (the weight's release URL). Only when
downloads are allowed (see :mod:`clipcompare.models.weights`) and neither cache holds them does timm
fetch them itself. The preprocessing is the one timm's ``validate.py`` evaluates with:
``resolve_model_data_config(model, use_test_size=True)`` then ``create_transform(**config)``.
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipcompare.errors import MissingWeightsError, UserError
from clipcompare.models.build_info import BuildInfo, LoadedModel, activation_names, single_size
from clipcompare.models.spec import ModelSpec
from clipcompare.models.weights import (
    fall_back_or_raise,
    hf_cached,
    hf_hub_offline,
    load_strict,
    read_state_dict,
    require_network,
)

log = logging.getLogger(__name__)

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub repos hold, preferred first
_RESIZE_MODES = {"center": "shortest", "squash": "squash", "border": "longest"}


def timm_pretrained_name(arch: str, tag: str | None) -> tuple[str, list[str]]:
    """``ARCH.TAG`` as timm names the weights (no tag: timm's default one, or ``ARCH`` when it has none)
    and the arch's tags; :class:`UserError` with the closest names or the tags that exist."""
    import timm
    from timm.models import get_arch_pretrained_cfgs

    if not timm.is_model(arch):
        known = timm.list_models()
        close = difflib.get_close_matches(arch, known, n=5, cutoff=0.5) or ["resnet50", "convnext_tiny"]
        raise UserError(f"unknown timm model {arch!r}; closest: {', '.join(close)}")
    tags = [name.partition(".")[2] for name in get_arch_pretrained_cfgs(arch)]
    if tag is None:
        return (f"{arch}.{tags[0]}" if tags else arch), tags  # timm lists the default tag first
    if tag not in tags:
        listed = ", ".join(tags) if tags else "none (it has no pretrained weights in timm)"
        raise UserError(f"timm model {arch} has no pretrained tag {tag!r}; its tags: {listed}")
    return f"{arch}.{tag}", tags


def load_timm(spec: ModelSpec, *, allow_random: bool = False) -> LoadedModel:
    """A timm classifier built as ``timm.create_model(ARCH.TAG)``, its weights from the local caches (or
    ``=FILE``, loaded strictly), preprocessed as timm's ``validate.py`` does."""
    import timm

    name, _ = timm_pretrained_name(spec.arch, spec.tag)
    model = timm.create_model(name, pretrained=False)
    preprocess, build = eval_transform(model, name, spec)
    if spec.path is not None:
        load_strict(model, read_state_dict(spec.path), spec.path)
        return LoadedModel(spec, model, preprocess, pretrained=True, weights_file=str(spec.path), build=build)
    cfg = model.pretrained_cfg
    found = cached_weights(cfg)
    if found is not None:
        path = Path(found)
        load_strict(model, read_state_dict(path), path)
        return LoadedModel(spec, model, preprocess, pretrained=True, weights_file=str(path), build=build)
    err = missing_weights_error(spec, name, cfg)
    try:
        if not (cfg.get("hf_hub_id") or cfg.get("url")):
            raise OSError("timm has no pretrained weights for it")
        require_network(f"https://huggingface.co/{cfg['hf_hub_id']}" if cfg.get("hf_hub_id") else cfg["url"])
        timm.models.load_pretrained(model, pretrained_cfg=cfg)  # timm's own download (downloads are on)
    except Exception as exc:  # no cache and no network: any download error means the same to the user
        fall_back_or_raise(err, allow_random, exc)
        return LoadedModel(spec, model, preprocess, pretrained=False, missing_weights=err.filename, build=build)
    return LoadedModel(spec, model, preprocess, pretrained=True, weights_file=name, build=build)


def cached_weights(cfg: dict[str, Any]) -> str | None:
    """The weights file the Hugging Face cache or torch hub's cache holds for a pretrained config, or
    None; no network (huggingface_hub offline while looking)."""
    repo = cfg.get("hf_hub_id")
    if repo:
        names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else list(HF_WEIGHT_FILES)
        with hf_hub_offline():
            found = hf_cached(repo.partition("@")[0], names)  # timm's ids may pin a revision: ORG/REPO@REV
        if found:
            return found
    url = cfg.get("url")
    if url:
        target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if target.is_file() and target.suffix in (".pth", ".pt", ".bin", ".safetensors"):
            return str(target)
    return None


def missing_weights_error(spec: ModelSpec, name: str, cfg: dict[str, Any]) -> MissingWeightsError:
    """One line: which repo/file is needed and where it goes (or that timm has no weights for it)."""
    from huggingface_hub import constants

    how = f"pass {spec.name}=/path/FILE (a .pth/.safetensors state dict) or --allow-random"
    repo = cfg.get("hf_hub_id")
    if repo:
        file = cfg.get("hf_hub_filename") or HF_WEIGHT_FILES[0]
        return MissingWeightsError(
            f"weights for {spec.name} not found: need {file} of the Hugging Face repo {repo}, in the cache "
            f"{constants.HF_HUB_CACHE} (fetch it with `hf download {repo} {file}` where there is network); or {how}",
            file)
    if cfg.get("url"):
        file = os.path.basename(cfg["url"])
        target = Path(torch.hub.get_dir()) / "checkpoints" / file
        return MissingWeightsError(f"weights for {spec.name} not found: need {file} (from {cfg['url']}); put it at "
                                   f"{target}; or {how}", file)
    return MissingWeightsError(f"timm has no pretrained weights for {name}; {how}", None)


def eval_transform(model: nn.Module, name: str, spec: ModelSpec) -> tuple[Any, BuildInfo]:
    """timm's ``validate.py`` preprocessing for ``model`` (test size and crop where its pretrained config
    has them) and the :class:`BuildInfo` that records it."""
    from timm.data import create_transform, resolve_model_data_config

    config = resolve_model_data_config(model, use_test_size=True)
    transform = create_transform(**config)
    steps = list(getattr(transform, "transforms", []))
    # the sizes as the transform holds them (timm computes floor(size / crop_pct))
    resize = next((getattr(s, "size", None) for s in steps if "Resize" in type(s).__name__), None)
    crop = next((getattr(s, "size", None) for s in steps if "Crop" in type(s).__name__), None)
    size = config["input_size"][1:]
    crop_pct, crop_mode = config.get("crop_pct"), config.get("crop_mode") or "center"
    build = BuildInfo(
        architecture=f"timm {name} ({type(model).__name__})",
        activation=", ".join(activation_names(model)) or "none",
        activation_source=f"fixed by timm's {spec.arch}",
        logit_scale=None,
        resize=_square(resize if resize is not None else size),
        crop=_square(crop if crop is not None else size),
        interpolation=str(config.get("interpolation")),
        resize_mode=_RESIZE_MODES.get(crop_mode, crop_mode),
        mean=tuple(float(m) for m in config["mean"]), std=tuple(float(s) for s in config["std"]),
        preprocess_source=(f"timm resolve_model_data_config(use_test_size=True) of {name}: input "
                           f"{'x'.join(map(str, size))}, crop_pct {crop_pct}, crop_mode {crop_mode}"),
    )
    return transform, build


def _square(size: Any) -> int | list[int]:
    """A size as BuildInfo holds it: ``n`` for n, [n] and (n, n); else [h, w]."""
    value = single_size(size)
    return value[0] if isinstance(value, list) and len(set(value)) == 1 else value
