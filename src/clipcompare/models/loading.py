"""Load supervised (torchvision) and CLIP (open_clip) models from specs.

Pretrained weights come from the usual caches (torch hub, Hugging Face hub, ``~/.cache/clip``) or
are downloaded by torchvision/open_clip; local files are loaded directly. When weights are neither
cached nor downloadable, :class:`MissingWeightsError` names the file, where it comes from and
where to put it. With ``allow_random=True`` the architecture is built with random weights instead
(``LoadedModel.pretrained`` is then False), which is what ``inspect`` and the tests use.
open_clip's own ``hf-hub:ORG/REPO`` and ``local-dir:PATH`` names (``clip:hf-hub:...``) are built by
open_clip's factory from their open_clip_config.json, from the Hugging Face cache or the folder only.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import torch
from torch import nn

from clipcompare.errors import MissingWeightsError, UserError
from clipcompare.models.spec import DEFAULT_CLIP_TAG, DEFAULT_TORCHVISION_WEIGHTS, ModelSpec

log = logging.getLogger(__name__)

Preprocess = Callable[[Any], torch.Tensor]


@dataclass(frozen=True)
class BuildInfo:
    """Everything about a build that the weights do not determine, as the loader decided it.

    Two checkpoints with equal tensors give different numbers when any of this differs (a CLIP
    text tower built with GELU instead of the QuickGELU it was trained with, a 232-pixel resize
    instead of 256), so it is logged at ``-v``, shown by ``inspect`` and stored in run.json.
    """

    architecture: str  # the open_clip config or torchvision builder that was run
    activation: str  # measured on the built model: CLIP's transformer MLPs (QuickGELU/GELU), else the CNN's
    activation_source: str  # why that activation
    logit_scale: str | None  # CLIP: where exp(logit_scale) comes from; None for a classifier head
    resize: int | list[int]  # resize target before the crop (shorter side unless resize_mode says otherwise)
    crop: int | list[int]  # centre crop fed to the model
    interpolation: str
    resize_mode: str  # shortest (resize the shorter side, then crop), squash or longest (open_clip)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    preprocess_source: str  # whose preprocessing: a pretrained tag, torchvision weights, a model config

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for logs and ``inspect``."""
        scale = f"; logit scale: {self.logit_scale}" if self.logit_scale else ""
        return (f"{self.architecture}, activation {self.activation} ({self.activation_source}){scale}; "
                f"preprocess: {self.preprocess_text()}")

    def preprocess_text(self) -> str:
        """``resize … crop … mean … std … (source)``, as ``describe`` and ``inspect`` show it."""
        return (f"resize {self.resize} ({self.resize_mode}, {self.interpolation}), crop {self.crop}, "
                f"mean {_floats(self.mean)}, std {_floats(self.std)} ({self.preprocess_source})")


def _floats(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def activation_names(module: nn.Module) -> list[str]:
    """Activation classes used in ``module``, in order of first appearance (QuickGELU, ReLU, GELU...)."""
    found: list[str] = []
    for m in module.modules():
        cls = type(m)
        is_act = (cls.__module__ == "torch.nn.modules.activation"
                  and not isinstance(m, (nn.MultiheadAttention, nn.Softmax, nn.LogSoftmax))
                  ) or cls.__name__.endswith(("GELU", "ReLU", "SiLU", "Swish"))
        if is_act and cls.__name__ not in found:
            found.append(cls.__name__)
    return found


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
    build: BuildInfo | None = None  # what the loader decided beyond the weights (see BuildInfo)


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
        return not str(record.msg).startswith(_OPEN_CLIP_RANDOM_INIT_NOTES)


# ... and for hf-hub:/local-dir: names, its notes that the repo/folder has no weights (we said so already)
_OPEN_CLIP_RANDOM_INIT_NOTES = ("No pretrained weights loaded for model", "Local config loaded, but no CLIP weights",
                                "Could not find/download default weights on HF Hub")


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


@contextmanager
def seeded_init(seed: int = 0) -> Iterator[None]:
    """Random inits (``allow_random``) made inside are the same on every run, so a dry run is
    reproducible and resumable; the caller's RNG state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def load_model(spec: ModelSpec, *, allow_random: bool = False, device: str | torch.device = "cpu") -> LoadedModel:
    """Load either family; the single entry point the rest of the package uses."""
    loader = {"clip": load_clip, "trained": load_trained_checkpoint}.get(spec.family, load_torchvision)
    loaded = loader(spec, allow_random=allow_random)
    loaded.model.eval().to(device)
    if loaded.build is not None:
        log.info("%s: %s", loaded.spec.name, loaded.build.describe())
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
    """torchvision classifier with its weights' own transforms (V1: 256→224, V2: 232→224).

    A local file (``resnet50=FILE``) gets the transforms of IMAGENET1K_V1 unless the spec names
    the weights it holds (``resnet50:IMAGENET1K_V2=FILE``).
    """
    from torchvision import models

    weights = _torchvision_weights(spec.arch, spec.tag or (DEFAULT_TORCHVISION_WEIGHTS if spec.path else None))
    model = models.get_model(spec.arch, weights=None)
    preprocess = weights.transforms()
    build = _torchvision_build_info(spec, model, weights, preprocess)
    if spec.path is not None:
        state = _load_state_dict_file(spec.path)
        _load_strict(model, state, spec.path)
        return LoadedModel(spec, model, preprocess, pretrained=True, weights_file=str(spec.path), build=build)
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
        return LoadedModel(spec, model, preprocess, pretrained=False, missing_weights=filename, build=build)
    model.load_state_dict(state)
    return LoadedModel(spec, model, preprocess, pretrained=True, weights_file=str(target), build=build)


def _torchvision_build_info(spec: ModelSpec, model: nn.Module, weights: Any, preprocess: Any) -> BuildInfo:
    """A torchvision build: the architecture fixes the activation, the weights enum the transforms."""
    chosen = ", the default for a local file" if spec.path is not None and spec.tag is None else ""
    return BuildInfo(
        architecture=f"torchvision {spec.arch}",
        activation=", ".join(activation_names(model)) or "none",
        activation_source=f"fixed by torchvision's {spec.arch}",
        logit_scale=None,
        resize=_single(preprocess.resize_size), crop=_single(preprocess.crop_size),
        interpolation=preprocess.interpolation.value, resize_mode="shortest",
        mean=tuple(preprocess.mean), std=tuple(preprocess.std),
        preprocess_source=f"{weights.__class__.__name__}.{weights.name} transforms{chosen}",
    )


def _single(size: Any) -> int | list[int]:
    """torchvision and open_clip give sizes as an int, [n] or [h, w]; [n] means n."""
    if isinstance(size, (list, tuple)):
        return int(size[0]) if len(size) == 1 else [int(x) for x in size]
    return int(size)


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


# Spec suffixes that say which activation a local file was trained with. "-quickgelu" is how
# open_clip itself names its QuickGELU configs (RN50-quickgelu); "-gelu" is its counterpart.
ACTIVATION_SUFFIXES: dict[str, bool] = {"-quickgelu": True, "-gelu": False}


def _clip_arch(spec: ModelSpec) -> tuple[str, str | None]:
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


def _default_tag(tags: list[str]) -> str:
    """The tag ``clip:ARCH`` without ``@TAG`` means: OpenAI's when there is one, else the first listed."""
    return DEFAULT_CLIP_TAG if DEFAULT_CLIP_TAG in tags else tags[0]


def _act(quick: bool) -> str:
    return "QuickGELU" if quick else "GELU"


def _listed(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


@dataclass(frozen=True)
class _ClipPlan:
    """What a CLIP build uses besides the weights, and why; decided by :func:`_plan_clip_build` only."""

    arch: str
    quick_gelu: bool
    activation_source: str
    preprocess_cfg: dict  # a pretrained tag's cfg (mean/std/interpolation/resize_mode), or {} for the config's
    preprocess_source: str


def _plan_clip_build(spec: ModelSpec, arch: str, suffix: str | None, torchscript: bool) -> _ClipPlan:
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
    tag = spec.tag or (_default_tag(tags) if tags else None)
    tag_cfg = (open_clip.get_pretrained_cfg(arch, tag) or {}) if tag else {}
    pp_source = f"pretrained tag {arch}@{tag}" if tag_cfg else f"open_clip config {arch}"
    if suffix is not None:
        return _ClipPlan(arch, ACTIVATION_SUFFIXES[suffix], f"spec suffix {suffix}", tag_cfg, pp_source)
    if config_quick:
        return _ClipPlan(arch, True, f"open_clip config {arch} has quick_gelu", tag_cfg, pp_source)
    if spec.tag is not None or (spec.path is None and tag_cfg):
        quick = bool(tag_cfg.get("quick_gelu", False))
        return _ClipPlan(arch, quick, f"pretrained tag {tag} was trained with {_act(quick)}", tag_cfg, pp_source)
    if torchscript:
        return _ClipPlan(arch, True, "OpenAI TorchScript checkpoint (OpenAI's CLIP uses QuickGELU)", tag_cfg,
                         pp_source)
    if not tag_cfg:
        return _ClipPlan(arch, False, f"open_clip config {arch} (no released weights to follow)", tag_cfg, pp_source)
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
    return _ClipPlan(arch, quick, source, tag_cfg, pp_source)


def _clip_build_info(plan: _ClipPlan, model: nn.Module, pretrained: bool) -> BuildInfo:
    """The :class:`BuildInfo` of a built open_clip model, read back from the model itself."""
    pp = dict(model.visual.preprocess_cfg)
    acts = activation_names(model)
    gelus = [a for a in acts if a.endswith("GELU")]
    scale = float(model.logit_scale.detach().float().exp())
    size = _single(pp.get("size", 224))
    return BuildInfo(
        architecture=f"open_clip {plan.arch}",
        activation=", ".join(gelus or acts) or "none",
        activation_source=plan.activation_source,
        logit_scale=f"{'learned, from the checkpoint' if pretrained else 'random init'} (exp = {scale:.4g})",
        resize=size, crop=size, interpolation=str(pp.get("interpolation")), resize_mode=str(pp.get("resize_mode")),
        mean=tuple(float(x) for x in pp.get("mean", ())), std=tuple(float(x) for x in pp.get("std", ())),
        preprocess_source=plan.preprocess_source,
    )


def _hf_cached(repo: str, names: list[str]) -> str | None:
    """The first of ``names`` that the Hugging Face cache holds for ``repo`` (main), without any network."""
    from huggingface_hub import try_to_load_from_cache

    for name in names:
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str):
            return found
    return None


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
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

        repo, filename = os.path.split(hub)
        return _hf_cached(repo, [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME])
    return None


def _require_network(url: str) -> None:
    """Fail at once when the download host does not resolve.

    Without this, huggingface_hub retries with back-off for ~45 s per file before giving up,
    which is what an offline user would otherwise wait for every missing model.
    """
    if os.environ.get("CLIPCOMPARE_OFFLINE") == "1":  # every download of every loader passes here
        raise OSError("CLIPCOMPARE_OFFLINE=1: downloads are switched off")
    if os.environ.get("HF_HUB_OFFLINE") == "1" and "huggingface" in url:
        raise OSError("HF_HUB_OFFLINE=1")
    host = urlparse(url).hostname or url
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        raise OSError(f"cannot reach {host}: {exc}") from exc


def load_clip(spec: ModelSpec, *, allow_random: bool = False) -> LoadedModel:
    """open_clip model + preprocess + tokenizer, built as :func:`_plan_clip_build` decides."""
    import open_clip

    if spec.schema is not None:
        return _load_schema_clip(spec, allow_random=allow_random)
    arch, suffix = _clip_arch(spec)
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if spec.tag is not None and spec.tag not in tags:
        raise UserError(f"{arch} has no pretrained tag {spec.tag!r}; available: {', '.join(tags) or 'none'}")
    weights_file: str | None = None
    torchscript = False
    if spec.path is not None:
        if not spec.path.is_file():
            raise UserError(f"weights file not found: {spec.path}")
        torchscript = _is_torchscript(spec.path)
        weights_file = str(spec.path)
    elif spec.tag is None and tags:
        spec = replace(spec, tag=_default_tag(tags))
    plan = _plan_clip_build(spec, arch, suffix, torchscript)

    missing: str | None = None
    if weights_file is None and spec.tag is None:
        _fall_back_or_raise(MissingWeightsError(
            f"{spec.name} has no pretrained weights in open_clip; pass clip:{spec.arch}=/path/weights"), allow_random)
    elif weights_file is None:
        tag_cfg = plan.preprocess_cfg
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
    pretrained = weights_file is not None
    return LoadedModel(spec, model, preprocess, tokenizer, pretrained=pretrained, weights_file=weights_file,
                       missing_weights=missing, build=_clip_build_info(plan, model, pretrained))


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


# --------------------------------------------------------------------------- open_clip hf-hub: / local-dir:


@contextmanager
def hf_hub_offline() -> Iterator[None]:
    """Keep huggingface_hub off the network while open_clip reads files we found in its cache.

    huggingface_hub reads HF_HUB_OFFLINE once, at import; without it every file open_clip asks for
    (config, weights, tokenizer) first tries a HEAD request, which retries for ~23 s when offline.
    """
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _local_dir_files(spec: ModelSpec, allow_random: bool) -> tuple[str, str, str | None]:
    """(where, config file, weights file or None) of a ``local-dir:`` folder."""
    from open_clip.constants import HF_CONFIG_NAME
    from open_clip.factory import _find_checkpoint_in_dir  # the file open_clip itself will load

    folder = Path(spec.source)
    if not folder.is_dir():
        raise UserError(f"{spec.name}: folder not found: {folder}")
    config = folder / HF_CONFIG_NAME
    if not config.is_file():
        raise MissingWeightsError(
            f"{spec.name}: {folder} has no {HF_CONFIG_NAME} (open_clip's model_cfg and preprocess_cfg)"
            + ("; --allow-random cannot stand in: even random weights need the config" if allow_random else ""),
            HF_CONFIG_NAME)
    return str(folder), str(config), _find_checkpoint_in_dir(folder)


def _hf_hub_files(spec: ModelSpec, allow_random: bool) -> tuple[str, str, str | None]:
    """(where, config file, weights file or None) of an ``hf-hub:`` repo, from the local cache only."""
    from huggingface_hub import constants
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo = spec.source
    config = _hf_cached(repo, [HF_CONFIG_NAME])
    if config is None:
        raise MissingWeightsError(
            f"{spec.name} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}): need {HF_CONFIG_NAME} and "
            f"{HF_SAFE_WEIGHTS_NAME} (or {HF_WEIGHTS_NAME}) of {repo}; fetch them with `hf download {repo}` "
            "(or huggingface-cli download) where there is network, into the cache HF_HOME / HF_HUB_CACHE name"
            + ("; --allow-random cannot stand in: even random weights need the config" if allow_random else ""),
            HF_CONFIG_NAME)
    # open_clip takes the safetensors file when there is one (pretrained._get_safe_alternatives)
    weights = _hf_cached(repo, [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME])
    return f"hf-hub:{repo} (cached snapshot {Path(config).parent.name[:12]})", config, weights


def _load_schema_clip(spec: ModelSpec, *, allow_random: bool = False) -> LoadedModel:
    """``clip:hf-hub:ORG/REPO`` / ``clip:local-dir:PATH``: built by open_clip's own factory from the
    repo's/folder's open_clip_config.json (architecture, quick_gelu, preprocess_cfg) and weights."""
    import open_clip
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if spec.tag is not None or spec.path is not None:
        raise UserError(f"{spec.name}: the {'repo' if spec.schema == 'hf-hub' else 'folder'} holds its own weights; "
                        "a weights file (=FILE, --weights) or @TAG makes no sense with it")
    files = _hf_hub_files if spec.schema == "hf-hub" else _local_dir_files
    where, config, weights_file = files(spec, allow_random)
    missing: str | None = None
    if weights_file is None:
        err = MissingWeightsError(
            f"weights for {spec.name} not found: {where} has {HF_CONFIG_NAME} but neither {HF_SAFE_WEIGHTS_NAME} "
            f"nor {HF_WEIGHTS_NAME}"
            + (f"; fetch them with `hf download {spec.source}`" if spec.schema == "hf-hub" else "; put one beside it"),
            HF_SAFE_WEIGHTS_NAME)
        _fall_back_or_raise(err, allow_random)
        missing = err.filename
    name = spec.arch  # open_clip's own name for it: hf-hub:ORG/REPO or local-dir:/abs/folder
    try:
        with hf_hub_offline():
            quick = bool((open_clip.get_model_config(name) or {}).get("quick_gelu", False))
            model, _, preprocess = open_clip.create_model_and_transforms(name, load_weights=weights_file is not None)
            tokenizer = open_clip.get_tokenizer(name)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        # a malformed config, or weights that do not fit it: open_clip's first line says which
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{spec.name}: open_clip cannot build it from {config}: {first}") from None
    plan = _ClipPlan(name, quick, f"{HF_CONFIG_NAME} of {where}: quick_gelu {str(quick).lower()}", {},
                     f"preprocess_cfg in {HF_CONFIG_NAME} of {where}")
    pretrained = weights_file is not None
    return LoadedModel(spec, model, preprocess, tokenizer, pretrained=pretrained, weights_file=weights_file,
                       missing_weights=missing, build=_clip_build_info(plan, model, pretrained))
