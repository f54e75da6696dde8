"""Model specs as typed on the command line, parsed into a small dataclass.

Grammar::

    resnet50                      torchvision resnet50, default weights (IMAGENET1K_V1)
    resnet50:IMAGENET1K_V2        torchvision weights enum member
    resnet50=/path/weights.pth    local torchvision state_dict (IMAGENET1K_V1's transforms)
    resnet50:IMAGENET1K_V2=/path  a local file holding those weights: their transforms
    clip:RN50                     open_clip RN50 with the ``openai`` tag (QuickGELU); models
                                  without an openai tag get their first listed tag
    clip:ViT-B-32@laion2b_s34b_b79k
    clip:RN50=/path/RN50.pt       local OpenAI TorchScript or open_clip .pt/.bin/.safetensors, built
                                  as ``clip:RN50`` is (activation and preprocessing of its default tag)
    clip:ViT-B-32@laion2b_s34b_b79k=/path/file
                                  a local file holding that tag's weights: the tag's activation
                                  and preprocessing
    clip:RN50-gelu=/path/file     a local file trained with plain GELU (``-quickgelu``: QuickGELU)
    clip:hf-hub:ORG/REPO          open_clip's Hugging Face form: the repo's open_clip_config.json and
                                  weights, read from the local Hugging Face cache only
    clip:local-dir:PATH           open_clip's folder form: PATH (relative: from the working directory)
                                  holds open_clip_config.json and open_clip_model.safetensors (or
                                  open_clip_pytorch_model.bin)
    trained=/path/run/checkpoints/best.pt   a ``clipcompare train`` checkpoint (CLIP-like: zero-shot)
    timm:resnet50.a1_in1k         a timm classifier with that pretrained tag (no tag: timm's default)
    timm:resnet50.a1_in1k=/path   a local timm state dict (.pth/.safetensors) of that model
    hf:ORG/REPO                   a transformers CLIPModel / SiglipModel repo, read from the local Hugging
                                  Face cache only (config.json, weights, the repo's processor)
    hf:PATH                       the same from a ``save_pretrained`` folder. An existing folder wins: PATH
                                  is a folder when it names one (relative: from the working directory),
                                  else ORG/REPO is a repo id; ``./``, ``/`` or ``~`` always mean a folder

The two open_clip forms carry their own config, preprocessing and weights, so ``@TAG`` and
``=FILE`` are refused with them. ``arch`` holds the name open_clip is given (``hf-hub:ORG/REPO``,
``local-dir:/absolute/path``); the display name of a folder is ``clip:local-dir:<folder name>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from clipcompare.errors import UserError

Family = Literal["torchvision", "clip", "trained", "timm", "hf"]
# classifiers scored by their 1000 ImageNet logits; every other family is CLIP-like (a zero-shot head)
SUPERVISED_FAMILIES: tuple[str, ...] = ("torchvision", "timm")

DEFAULT_TORCHVISION_WEIGHTS = "IMAGENET1K_V1"
# the comparison this tool is about: every command defaults to it
DEFAULT_MODELS: tuple[str, ...] = ("resnet50", "clip:RN50")
DEFAULT_CLIP_TAG = "openai"

_NAME = re.compile(r"^[A-Za-z0-9_.\-/]+$")
# open_clip's model-name schemas (open_clip.factory.parse_model_name)
OPEN_CLIP_SCHEMAS: tuple[str, ...] = ("hf-hub", "local-dir")
_HF_REPO = re.compile(r"^[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a family, an architecture, and either a pretrained tag or a local file."""

    family: Family
    arch: str
    tag: str | None = None
    path: Path | None = None

    @property
    def supervised(self) -> bool:
        """A classifier with ImageNet logits (torchvision, timm), not a CLIP-like model."""
        return self.family in SUPERVISED_FAMILIES

    @property
    def schema(self) -> str | None:
        """``hf-hub`` or ``local-dir`` for open_clip's schema'd names, else None."""
        head, sep, _ = self.arch.partition(":")
        return head if self.family == "clip" and sep and head in OPEN_CLIP_SCHEMAS else None

    @property
    def source(self) -> str:
        """What follows the schema: ``ORG/REPO`` or the absolute folder (the arch when no schema)."""
        return self.arch.partition(":")[2] if self.schema else self.arch

    @property
    def name(self) -> str:
        """Canonical display name, e.g. ``resnet50:IMAGENET1K_V1`` or ``clip:RN50@openai``."""
        if self.family == "trained" and self.path is not None:
            # the run directory names a checkpoint better than "best.pt" alone
            run = self.path.parent.parent.name if self.path.parent.name == "checkpoints" else self.path.parent.name
            return f"trained={run}/{self.path.name}" if run else f"trained={self.path.name}"
        if self.family == "hf":
            # a folder (absolute arch) by its name, as clip:local-dir: is; a repo id by itself
            return f"hf:{Path(self.arch).name}" if self.arch.startswith("/") else f"hf:{self.arch}"
        if self.schema == "local-dir":
            # the folder's name, as a file's name stands for it in NAME=FILE; the full path is the weights_file
            base = f"clip:local-dir:{Path(self.source).name or self.source}"
        elif self.family == "clip":
            base = f"clip:{self.arch}" + (f"@{self.tag}" if self.tag else "")
        elif self.family == "timm":
            base = f"timm:{self.arch}" + (f".{self.tag}" if self.tag else "")
        else:
            base = f"{self.arch}:{self.tag}" if self.tag else self.arch
        return f"{base}={self.path.name}" if self.path is not None else base

    @property
    def text(self) -> str:
        """The spec typed back, with absolute paths: ``parse_spec(spec.text) == spec`` from any working
        directory (``hf:/abs/folder``, ``clip:local-dir:/abs``, ``timm:resnet50.a1_in1k=/abs/file``); run.json
        records it beside the display ``name`` so a run's models can be loaded again."""
        file = f"={self.path.expanduser().resolve()}" if self.path is not None else ""
        if self.family == "trained":
            return f"trained{file}"
        if self.family == "hf" or self.schema:
            return f"{self.family}:{self.arch}"  # an absolute folder or a repo id (local-dir: absolute too)
        if self.family == "clip":
            return f"clip:{self.arch}" + (f"@{self.tag}" if self.tag else "") + file
        if self.family == "timm":
            return f"timm:{self.arch}" + (f".{self.tag}" if self.tag else "") + file
        return self.arch + (f":{self.tag}" if self.tag else "") + file

    def __str__(self) -> str:
        return self.name


def parse_spec(text: str) -> ModelSpec:
    """Parse a model spec string; raise :class:`UserError` with a one-line reason if malformed."""
    raw = text.strip()
    if not raw:
        raise UserError("empty model spec")
    for schema in OPEN_CLIP_SCHEMAS:
        # before splitting on '=': a folder's path may hold one
        if raw.startswith(f"clip:{schema}:"):
            return _schema_spec(text, schema, raw[len(f"clip:{schema}:"):])
    if raw.startswith("hf:"):
        return _hf_spec(text, raw[len("hf:"):])
    path: Path | None = None
    if "=" in raw:
        raw, _, file = raw.partition("=")
        if not file:
            raise UserError(f"model spec {text!r}: nothing after '='; expected a weights file path")
        path = Path(file).expanduser()
    if raw == "trained":
        if path is None:
            raise UserError(f"model spec {text!r}: expected trained=PATH to a clipcompare train checkpoint")
        return ModelSpec("trained", "trained", path=path)
    if raw.startswith("clip:"):
        body = raw[len("clip:"):]
        arch, _, tag = body.partition("@")
        if not arch:
            raise UserError(f"model spec {text!r}: missing architecture after 'clip:' (e.g. clip:RN50)")
        _check_name(arch, text)
        if tag:
            _check_name(tag, text)
        # a tag with a file says whose weights the file holds (activation, preprocessing); no tag:
        # the loader picks DEFAULT_CLIP_TAG when the model has it, else its first tag
        return ModelSpec("clip", arch, tag=tag or None, path=path)
    if raw.startswith("timm:"):
        return _timm_spec(text, raw[len("timm:"):], path)
    arch, _, tag = raw.partition(":")
    _check_name(arch, text)
    if tag:
        _check_name(tag, text)
    return ModelSpec("torchvision", arch, tag=(tag or (None if path else DEFAULT_TORCHVISION_WEIGHTS)), path=path)


def _schema_spec(text: str, schema: str, ident: str) -> ModelSpec:
    """``clip:hf-hub:ORG/REPO`` or ``clip:local-dir:PATH`` (resolved to an absolute folder)."""
    form, holder = ("clip:hf-hub:ORG/REPO", "repo") if schema == "hf-hub" else ("clip:local-dir:PATH", "folder")
    if not ident:
        raise UserError(f"model spec {text!r}: nothing after '{schema}:'; expected {form}")
    refused = (f"model spec {text!r}: {form} takes no @TAG or =FILE (nor --weights): a tag or weights file makes "
               f"no sense with it, the {holder}'s open_clip_config.json and weights say what to build and load")
    if schema == "local-dir":
        folder = Path(ident).expanduser()
        # '@' and '=' may be part of a real folder's name; only a path that is no folder is refused for them
        if ("=" in ident or "@" in ident) and not folder.is_dir():
            raise UserError(f"{refused} (and there is no folder {ident!r})")
        return ModelSpec("clip", f"local-dir:{folder.resolve()}")
    if "=" in ident or "@" in ident:
        raise UserError(refused)
    _check_repo_id(ident, f"model spec {text!r}: {ident!r} is not a Hugging Face repo id; expected {form}")
    return ModelSpec("clip", f"hf-hub:{ident}")


def _check_repo_id(ident: str, bad: str) -> None:
    """UserError ``bad`` (with the hub's reason) unless ``ident`` is a valid ``ORG/REPO`` repo id."""
    if not _HF_REPO.match(ident):
        raise UserError(bad)
    from huggingface_hub.utils import validate_repo_id  # the hub's own rules (no leading '-', no '--', ...)

    try:
        validate_repo_id(ident)
    except ValueError as exc:
        raise UserError(f"{bad} ({str(exc).splitlines()[0]})") from None


def _timm_spec(text: str, body: str, path: Path | None) -> ModelSpec:
    """``timm:ARCH[.TAG][=FILE]``, timm's own ``architecture.tag`` name (the tag is checked when loading)."""
    arch, _, tag = body.partition(".")
    if not arch:
        raise UserError(f"model spec {text!r}: missing architecture after 'timm:' (e.g. timm:resnet50.a1_in1k)")
    _check_name(arch, text)
    if "/" in arch:
        raise UserError(f"model spec {text!r}: {arch!r} is not a timm model name (e.g. timm:resnet50.a1_in1k)")
    if tag:
        _check_name(tag, text)
    return ModelSpec("timm", arch, tag=tag or None, path=path)


def _hf_spec(text: str, ident: str) -> ModelSpec:
    """``hf:PATH`` (an existing folder, or anything starting ``./``, ``/``, ``~``) or ``hf:ORG/REPO``."""
    if not ident:
        raise UserError(f"model spec {text!r}: nothing after 'hf:'; expected hf:ORG/REPO or hf:PATH")
    folder = Path(ident).expanduser()
    if folder.is_dir():  # an existing folder wins over a repo id of the same spelling
        return ModelSpec("hf", str(folder.resolve()))
    if "=" in ident or "@" in ident:  # '@'/'=' in a real folder's name was taken above
        form = "hf:PATH" if ident.startswith((".", "/", "~")) else "hf:ORG/REPO"
        raise UserError(f"model spec {text!r}: {form} takes no @TAG or =FILE (nor --weights): the "
                        f"{'folder' if form == 'hf:PATH' else 'repo'}'s config.json and weights say what to build "
                        "and load")
    if ident.startswith((".", "/", "~")):
        raise UserError(f"model spec {text!r}: folder not found: {folder}")
    _check_repo_id(ident, f"model spec {text!r}: {ident!r} is neither a folder nor a Hugging Face repo id; "
                          "expected hf:ORG/REPO or hf:PATH")
    return ModelSpec("hf", ident)


def _check_name(name: str, text: str) -> None:
    if not _NAME.match(name):
        raise UserError(f"model spec {text!r}: {name!r} is not a valid model or weights name")
