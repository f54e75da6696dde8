"""open_clip's own name forms: ``clip:hf-hub:ORG/REPO`` and ``clip:local-dir:PATH``.

open_clip's factory builds them from the repo's/folder's open_clip_config.json (architecture,
quick_gelu, preprocess_cfg) and weights, read from the Hugging Face cache or the folder only.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from clipcompare.errors import MissingWeightsError, UserError
from clipcompare.models.build_info import LoadedModel
from clipcompare.models.clip import ClipPlan, clip_build_info, quiet_random_init
from clipcompare.models.spec import ModelSpec
from clipcompare.models.weights import (
    error_reason,
    fall_back_or_raise,
    hf_cached,
    hf_hub_offline,
    not_in_hf_cache,
    quiet_warnings,
    read_state_dict,
)


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
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo = spec.source
    config = hf_cached(repo, [HF_CONFIG_NAME])
    if config is None:
        raise not_in_hf_cache(
            spec.name, repo, f"{HF_CONFIG_NAME} and {HF_SAFE_WEIGHTS_NAME} (or {HF_WEIGHTS_NAME})", HF_CONFIG_NAME,
            "; --allow-random cannot stand in: even random weights need the config" if allow_random else "")
    # open_clip takes the safetensors file when there is one (pretrained._get_safe_alternatives)
    weights = hf_cached(repo, [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME])
    return f"hf-hub:{repo} (cached snapshot {Path(config).parent.name[:12]})", config, weights


def load_clip_hub(spec: ModelSpec, *, allow_random: bool = False) -> LoadedModel:
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
        fall_back_or_raise(err, allow_random)
        missing = err.filename
    name = spec.arch  # open_clip's own name for it: hf-hub:ORG/REPO or local-dir:/abs/folder
    try:
        with hf_hub_offline(), quiet_random_init(), quiet_warnings() if weights_file else nullcontext():
            quick = bool((open_clip.get_model_config(name) or {}).get("quick_gelu", False))
            model, _, preprocess = open_clip.create_model_and_transforms(name, load_weights=weights_file is not None)
            tokenizer = open_clip.get_tokenizer(name)
    except Exception as exc:
        if weights_file is not None:
            read_state_dict(Path(weights_file))  # raises "cannot read weights file" when the file is the problem
        # a malformed config, or weights that do not fit it: open_clip's first line says which
        raise UserError(f"{spec.name}: open_clip cannot build it from {config}: {error_reason(exc)}") from None
    plan = ClipPlan(name, quick, f"{HF_CONFIG_NAME} of {where}: quick_gelu {str(quick).lower()}", {},
                    f"preprocess_cfg in {HF_CONFIG_NAME} of {where}")
    pretrained = weights_file is not None
    return LoadedModel(spec, model, preprocess, tokenizer, pretrained=pretrained, weights_file=weights_file,
                       missing_weights=missing, build=clip_build_info(plan, model, pretrained))
