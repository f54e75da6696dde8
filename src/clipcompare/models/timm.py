"""timm classifiers: ``timm:resnet50.a1_in1k``, ``timm:resnet50`` (timm's default tag), ``timm:ARCH.TAG=FILE``.

The pretrained weights are found where timm keeps them, without network: the Hugging Face cache
(``timm/ARCH.TAG``, ``model.safetensors`` or ``pytorch_model.bin``) or torch hub's checkpoint cache (the
weight's release URL); that file (or ``=FILE``) is then loaded by timm itself,
``timm.create_model(ARCH.TAG, pretrained=True, pretrained_cfg_overlay={"file": FILE})``, so the
model's own ``pretrained_filter_fn``, EMA choice and checkpoint cleaning apply as in timm. Only when
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
from clipcompare.models.build_info import BuildInfo, LoadedModel, activation_names, square_size
from clipcompare.models.spec import ModelSpec
from clipcompare.models.weights import (
    check_weights_file,
    error_reason,
    fall_back_or_raise,
    hf_cached,
    hf_hub_offline,
    quiet_warnings,
    require_network,
)

log = logging.getLogger(__name__)

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub repos hold, preferred first
_RESIZE_MODES = {"center": "shortest", "squash": "squash", "border": "longest"}


def default_pretrained_name(arch: str) -> str | None:
    """``ARCH.TAG`` with timm's default tag for ``arch`` (timm lists it first), ``ARCH`` when timm has no
    pretrained weights for it, None when timm does not know ``arch``."""
    import timm
    from timm.models import get_arch_pretrained_cfgs

    if not timm.is_model(arch):
        return None
    names = list(get_arch_pretrained_cfgs(arch))
    return names[0] if names else arch


def timm_pretrained_name(arch: str, tag: str | None) -> tuple[str, list[str]]:
    """``ARCH.TAG`` as timm names the weights (no tag: :func:`default_pretrained_name`) and the arch's tags;
    :class:`UserError` with the closest names or the tags that exist."""
    import timm
    from timm.models import get_arch_pretrained_cfgs

    default = default_pretrained_name(arch)
    if default is None:
        known = timm.list_models()
        close = difflib.get_close_matches(arch, known, n=5, cutoff=0.5) or ["resnet50", "convnext_tiny"]
        raise UserError(f"unknown timm model {arch!r}; closest: {', '.join(close)}")
    tags = [name.partition(".")[2] for name in get_arch_pretrained_cfgs(arch)]
    if tag is None:
        return default, tags
    if tag not in tags:
        listed = ", ".join(tags) if tags else "none (it has no pretrained weights in timm)"
        raise UserError(f"timm model {arch} has no pretrained tag {tag!r}; its tags: {listed}")
    return f"{arch}.{tag}", tags


def load_timm(spec: ModelSpec, *, allow_random: bool = False) -> LoadedModel:
    """A timm classifier ``ARCH.TAG``, its weights (``=FILE`` or the local caches) loaded by timm's own
    loader, preprocessed as timm's ``validate.py`` does."""
    import timm
    from timm.models import get_pretrained_cfg

    name, _ = timm_pretrained_name(spec.arch, spec.tag)
    file = spec.path
    if file is None:
        pretrained = get_pretrained_cfg(name)
        found = cached_weights(pretrained.to_dict() if pretrained is not None else {})
        file = Path(found) if found is not None else None
    if file is not None:
        model = create_from_file(name, file)
        preprocess, build = eval_transform(model, name, spec)
        return LoadedModel(spec, model, preprocess, pretrained=True, weights_file=str(file), build=build)
    model = timm.create_model(name, pretrained=False)
    preprocess, build = eval_transform(model, name, spec)
    cfg = model.pretrained_cfg
    err = missing_weights_error(spec, name, cfg)
    try:
        if not (cfg.get("hf_hub_id") or cfg.get("url")):
            raise OSError("timm has no pretrained weights for it")
        require_network(f"https://huggingface.co/{cfg['hf_hub_id']}" if cfg.get("hf_hub_id") else cfg["url"])
    except OSError as exc:  # no weights anywhere, downloads off or no network: the missing-weights line
        fall_back_or_raise(err, allow_random, exc)
        return LoadedModel(spec, model, preprocess, pretrained=False, missing_weights=err.filename, build=build)
    try:
        model = timm.create_model(name, pretrained=True)  # timm's own download and load (downloads are on)
    except OSError as exc:  # the download itself failed (network, hub): the same as not found
        fall_back_or_raise(err, allow_random, exc)
        return LoadedModel(spec, model, preprocess, pretrained=False, missing_weights=err.filename, build=build)
    except Exception as exc:  # noqa: BLE001 - downloaded but not loadable: say so, not "not found"
        raise UserError(f"the weights timm downloaded for {name} do not load: {error_reason(exc)}") from None
    fetched = cached_weights(cfg)  # where timm put them, for run.json
    return LoadedModel(spec, model, preprocess, pretrained=True, weights_file=fetched or name, build=build)


def create_from_file(name: str, file: Path) -> nn.Module:
    """``timm.create_model(name, pretrained=True)`` with its weights from ``file``, offline; a missing
    file, one that is no weights file, and one of another model are each one line."""
    import timm

    check_weights_file(file)
    try:
        with quiet_warnings():  # torch's notes on the file go into the one line below, not onto stderr
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(file)})
    except RuntimeError as exc:
        # model.load_state_dict's strict check (after timm's filter_fn): the file holds another model
        if "Error(s) in loading state_dict" in str(exc) or "shape" in str(exc):
            raise UserError(f"{file} does not match timm's {name} ({error_reason(exc)})") from None
        raise UserError(f"cannot read weights file {file}: {error_reason(exc)}") from None
    except (KeyError, IndexError, ValueError) as exc:  # a model's filter_fn meeting another model's keys
        if isinstance(exc, UnicodeDecodeError):
            raise UserError(f"cannot read weights file {file}: {error_reason(exc)}") from None
        raise UserError(f"{file} does not match timm's {name} ({type(exc).__name__}: {error_reason(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - safetensors/pickle/zip errors: not a readable weights file
        raise UserError(f"cannot read weights file {file}: {error_reason(exc)}") from None


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
        resize=square_size(resize if resize is not None else size),
        crop=square_size(crop if crop is not None else size),
        interpolation=str(config.get("interpolation")),
        resize_mode=_RESIZE_MODES.get(crop_mode, crop_mode),
        mean=tuple(float(m) for m in config["mean"]), std=tuple(float(s) for s in config["std"]),
        preprocess_source=(f"timm resolve_model_data_config(use_test_size=True) of {name}: input "
                           f"{'x'.join(map(str, size))}, crop_pct {crop_pct}, crop_mode {crop_mode}"),
    )
    return transform, build
