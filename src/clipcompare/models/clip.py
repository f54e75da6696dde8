"""open_clip models by config name: ``clip:RN50``, ``clip:ARCH@TAG``, ``clip:ARCH=FILE``.

Weights of a pretrained tag come from ``~/.cache/clip`` or the Hugging Face cache, or are downloaded
by open_clip (unless downloads are off, see :mod:`clipcompare.models.weights`); a local file is an
OpenAI TorchScript archive or an open_clip state dict. :func:`plan_clip_build` decides the activation
and preprocessing, which the weights do not tell.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from clipcompare.errors import MissingWeightsError, UserError
from clipcompare.models.build_info import BuildInfo, LoadedModel, activation_names, single_size
from clipcompare.models.spec import DEFAULT_CLIP_TAG, ModelSpec
from clipcompare.models.weights import (
    error_reason,
    fall_back_or_raise,
    hf_cached,
    hub_downloads_guarded,
    is_torchscript,
    quiet_warnings,
    read_state_dict,
    require_network,
)

log = logging.getLogger(__name__)

_CONFIGS_REGISTERED = False


def register_tiny_configs() -> None:
    """Make the package's tiny open_clip configs (``tiny-RN-quickgelu``, ``tiny-ViT``) loadable.

    They are real CLIP architectures at toy size, for tests and CPU dry runs of every command.
    """
    global _CONFIGS_REGISTERED
    if not _CONFIGS_REGISTERED:
        import open_clip

        open_clip.add_model_config(Path(__file__).parent / "configs")
        _CONFIGS_REGISTERED = True


# open_clip's notes that it built random weights (and, for hf-hub:/local-dir: names, that the
# repo/folder has none): we build random weights on purpose only, and our own warning says why
_OPEN_CLIP_RANDOM_INIT_NOTES = ("No pretrained weights loaded for model", "Local config loaded, but no CLIP weights",
                                "Could not find/download default weights on HF Hub")


class _DropRandomInitNotes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_OPEN_CLIP_RANDOM_INIT_NOTES)


@contextmanager
def quiet_random_init() -> Iterator[None]:
    """Drop open_clip's random-init notes while a build runs.

    open_clip logs them on the root logger itself (``logging.warning``), so the filter must sit
    there; it is installed only for the duration of the call, so importing changes no logging.
    """
    root = logging.getLogger()
    drop = _DropRandomInitNotes()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


# Spec suffixes that say which activation a local file was trained with. "-quickgelu" is how
# open_clip itself names its QuickGELU configs (RN50-quickgelu); "-gelu" is its counterpart.
ACTIVATION_SUFFIXES: dict[str, bool] = {"-quickgelu": True, "-gelu": False}


def clip_arch(spec: ModelSpec) -> tuple[str, str | None]:
    """The open_clip config name, and the activation suffix the spec added to it (if any).

    ``RN50-quickgelu`` is an open_clip config of its own and is used as is; ``RN50-gelu`` or
    ``ViT-B-16-quickgelu`` are not, so the suffix is taken off and read as the activation.
    """
    import open_clip

    register_tiny_configs()
    arch = spec.arch
    known = open_clip.list_models()
    if arch in known:
        return arch, None
    for suffix in ACTIVATION_SUFFIXES:
        base = arch.removesuffix(suffix)
        if base != arch and base in known:
            if spec.path is None:
                raise UserError(
                    f"clip:{arch}: the {suffix} suffix names the activation of a local file (clip:{arch}=FILE); "
                    f"released weights are built with the activation they were trained with (clip:{base})"
                )
            return base, suffix
    close = difflib.get_close_matches(arch, known, n=5, cutoff=0.5) or ["RN50", "ViT-B-32"]
    raise UserError(f"unknown open_clip model {arch!r}; closest: {', '.join(close)} (all: open_clip.list_models())")


def default_tag(tags: list[str]) -> str:
    """The tag ``clip:ARCH`` without ``@TAG`` means: OpenAI's when there is one, else the first listed."""
    return DEFAULT_CLIP_TAG if DEFAULT_CLIP_TAG in tags else tags[0]


def _act(quick: bool) -> str:
    return "QuickGELU" if quick else "GELU"


def _listed(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


@dataclass(frozen=True)
class ClipPlan:
    """What a CLIP build uses besides the weights, and why; decided by :func:`plan_clip_build` (or, for
    hf-hub:/local-dir: names, by the repo's own config)."""

    arch: str
    quick_gelu: bool
    activation_source: str
    preprocess_cfg: dict  # a pretrained tag's cfg (mean/std/interpolation/resize_mode), or {} for the config's
    preprocess_source: str


def plan_clip_build(spec: ModelSpec, arch: str, suffix: str | None, torchscript: bool) -> ClipPlan:
    """Activation and preprocessing of a CLIP build, from open_clip's own registry.

    A local file gets what ``clip:ARCH`` gets for that architecture's released weights: the
    activation and preprocessing of its default tag (``openai`` when there is one), so
    ``clip:RN50=FILE`` is QuickGELU like every released RN50. The spec can say otherwise:
    ``clip:ARCH@TAG=FILE`` (the file holds TAG's weights) or ``clip:ARCH-gelu=FILE`` /
    ``clip:ARCH-quickgelu=FILE`` (the activation itself).
    """
    import open_clip

    config_quick = bool((open_clip.get_model_config(arch) or {}).get("quick_gelu", False))
    tags = open_clip.list_pretrained_tags_by_model(arch)
    tag = spec.tag or (default_tag(tags) if tags else None)
    tag_cfg = (open_clip.get_pretrained_cfg(arch, tag) or {}) if tag else {}
    pp_source = f"pretrained tag {arch}@{tag}" if tag_cfg else f"open_clip config {arch}"
    if suffix is not None:
        return ClipPlan(arch, ACTIVATION_SUFFIXES[suffix], f"spec suffix {suffix}", tag_cfg, pp_source)
    if config_quick:
        return ClipPlan(arch, True, f"open_clip config {arch} has quick_gelu", tag_cfg, pp_source)
    if spec.tag is not None or (spec.path is None and tag_cfg):
        quick = bool(tag_cfg.get("quick_gelu", False))
        return ClipPlan(arch, quick, f"pretrained tag {tag} was trained with {_act(quick)}", tag_cfg, pp_source)
    if torchscript:
        return ClipPlan(arch, True, "OpenAI TorchScript checkpoint (OpenAI's CLIP uses QuickGELU)", tag_cfg,
                        pp_source)
    if not tag_cfg:
        return ClipPlan(arch, False, f"open_clip config {arch} (no released weights to follow)", tag_cfg, pp_source)
    # a local state dict: the weights do not say, so follow what clip:ARCH means
    by_act: dict[bool, list[str]] = {}
    for t in tags:
        by_act.setdefault(bool((open_clip.get_pretrained_cfg(arch, t) or {}).get("quick_gelu", False)), []).append(t)
    quick = bool(tag_cfg.get("quick_gelu", False))
    if len(by_act) > 1:
        log.warning(
            "clip:%s=%s: %s's released weights differ in activation (QuickGELU: %s; GELU: %s); building %s as "
            "clip:%s (@%s) does. If the file holds other weights, say which: clip:%s@TAG=FILE or clip:%s-%s=FILE",
            arch, spec.path, arch, _listed(by_act[True]), _listed(by_act[False]), _act(quick), arch, tag, arch,
            arch, "gelu" if quick else "quickgelu",
        )
        source = f"as clip:{arch} (@{tag}); {arch}'s released weights differ"
    else:
        source = f"as clip:{arch}: every released {arch} ({_listed(tags)}) uses {_act(quick)}"
    return ClipPlan(arch, quick, source, tag_cfg, pp_source)


def clip_build_info(plan: ClipPlan, model: nn.Module, pretrained: bool) -> BuildInfo:
    """The :class:`BuildInfo` of a built open_clip model, read back from the model itself."""
    pp = dict(model.visual.preprocess_cfg)
    acts = activation_names(model)
    gelus = [a for a in acts if a.endswith("GELU")]
    scale = float(model.logit_scale.detach().float().exp())
    size = single_size(pp.get("size", 224))
    return BuildInfo(
        architecture=f"open_clip {plan.arch}",
        activation=", ".join(gelus or acts) or "none",
        activation_source=plan.activation_source,
        logit_scale=f"{'learned, from the checkpoint' if pretrained else 'random init'} (exp = {scale:.4g})",
        resize=size, crop=size, interpolation=str(pp.get("interpolation")), resize_mode=str(pp.get("resize_mode")),
        mean=tuple(float(x) for x in pp.get("mean", ())), std=tuple(float(x) for x in pp.get("std", ())),
        preprocess_source=plan.preprocess_source,
    )


def unusable_weights(path: str | Path, arch: str, exc: BaseException) -> UserError:
    """The one-line error for a weights file open_clip failed on: ``cannot read weights file PATH: REASON``
    when the file itself is unreadable (read again, weights-only, to say why), else a mismatch with ``arch``.
    Only on the error path, so a good file is read once."""
    read_state_dict(Path(path))  # raises the "cannot read" UserError when the file is the problem
    return UserError(f"{path} does not match {arch}: {error_reason(exc)}")


def cached_clip_file(cfg: dict) -> str | None:
    """A tag's weights already on disk: ~/.cache/clip/<name>.pt (OpenAI's clip package and
    open_clip's URL downloads) or the Hugging Face cache, looked up without any network."""
    url = cfg.get("url", "")
    if url:
        candidate = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if candidate.is_file():
            return str(candidate)
    hub = cfg.get("hf_hub", "")
    if hub:
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

        repo, filename = os.path.split(hub)
        return hf_cached(repo, [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME])
    return None


def load_clip(spec: ModelSpec, *, allow_random: bool = False) -> LoadedModel:
    """open_clip model + preprocess + tokenizer, built as :func:`plan_clip_build` decides."""
    import open_clip

    arch, suffix = clip_arch(spec)
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if spec.tag is not None and spec.tag not in tags:
        raise UserError(f"{arch} has no pretrained tag {spec.tag!r}; available: {', '.join(tags) or 'none'}")
    weights_file: str | None = None
    torchscript = False
    if spec.path is not None:
        if not spec.path.is_file():
            raise UserError(f"weights file not found: {spec.path}")
        torchscript = is_torchscript(spec.path)
        weights_file = str(spec.path)
    elif spec.tag is None and tags:
        spec = replace(spec, tag=default_tag(tags))
    plan = plan_clip_build(spec, arch, suffix, torchscript)

    missing: str | None = None
    if weights_file is None and spec.tag is None:
        fall_back_or_raise(MissingWeightsError(
            f"{spec.name} has no pretrained weights in open_clip; pass clip:{spec.arch}=/path/weights"), allow_random)
    elif weights_file is None:
        tag_cfg = plan.preprocess_cfg
        weights_file = cached_clip_file(tag_cfg)
        try:
            if weights_file is None:
                # open_clip prefers the HF hub when huggingface_hub is installed
                prefers_hub = bool(tag_cfg.get("hf_hub")) and open_clip.pretrained.has_hf_hub()
                require_network("https://huggingface.co" if prefers_hub else tag_cfg.get("url", ""))
                weights_file = open_clip.download_pretrained(tag_cfg)
        except Exception as exc:
            err = _missing_clip_weights(spec, tag_cfg)
            fall_back_or_raise(err, allow_random, exc)
            missing = err.filename

    # TorchScript archives cannot be read with weights_only=True; torch.load hands them to
    # torch.jit.load, which restores tensors and TorchScript code but runs no pickled Python.
    # quick_gelu overrides the config's value (open_clip applies model kwargs last).
    kwargs: dict[str, Any] = dict(quick_gelu=plan.quick_gelu, weights_only=not torchscript)
    if plan.preprocess_cfg:
        # preprocessing (mean/std/interpolation) belongs to the tag even when we load the file ourselves
        cfg = plan.preprocess_cfg
        kwargs.update(
            image_mean=cfg.get("mean"), image_std=cfg.get("std"),
            image_interpolation=cfg.get("interpolation"), image_resize_mode=cfg.get("resize_mode"),
        )
    try:
        # warnings torch raises reading a file (TorchScript deprecation notes...) are not the user's to act on
        with quiet_warnings() if weights_file else nullcontext(), quiet_random_init(), hub_downloads_guarded():
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=weights_file, **kwargs)
    except Exception as exc:  # open_clip reads the file itself: say whether it is unreadable or does not fit
        if weights_file is None:
            raise
        raise unusable_weights(weights_file, arch, exc) from None
    with hub_downloads_guarded():
        tokenizer = open_clip.get_tokenizer(arch)
    pretrained = weights_file is not None
    return LoadedModel(spec, model, preprocess, tokenizer, pretrained=pretrained, weights_file=weights_file,
                       missing_weights=missing, build=clip_build_info(plan, model, pretrained))


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
