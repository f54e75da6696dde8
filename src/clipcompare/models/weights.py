"""Weight files and caches: reading a user's file safely, the caches looked up without network, and
the one switch that forbids every download.

Every loader reads a user's file through :func:`read_weights`, so each kind of bad file (missing,
empty, corrupt, random bytes, a pickle that would run code) is one line, ``cannot read weights file
PATH: REASON``, and no pickled Python ever runs (``torch.load(weights_only=True)``; TorchScript
archives go to ``torch.jit.load``, which restores tensors and TorchScript code only).

``CLIPCOMPARE_OFFLINE=1`` (anything but empty or ``0``) forbids every download (torchvision, open_clip,
Hugging Face hub): missing weights then behave exactly as on a machine without network.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from clipcompare.errors import MissingWeightsError, UserError

log = logging.getLogger(__name__)

OFFLINE_ENV = "CLIPCOMPARE_OFFLINE"


def downloads_allowed() -> bool:
    """False when ``CLIPCOMPARE_OFFLINE`` is set (to anything but empty or ``0``).

    Read at every call, not at import: a test or a parent process sets it, subprocesses inherit it.
    """
    return os.environ.get(OFFLINE_ENV, "") in ("", "0")


def require_network(url: str) -> None:
    """Fail at once when downloads are off or the download host does not resolve.

    Without the lookup, huggingface_hub retries with back-off for ~45 s per file before giving up,
    which is what an offline user would otherwise wait for every missing model.
    """
    if not downloads_allowed():
        raise OSError(f"downloads are off ({OFFLINE_ENV}={os.environ[OFFLINE_ENV]})")
    if os.environ.get("HF_HUB_OFFLINE") == "1" and "huggingface" in url:
        raise OSError("HF_HUB_OFFLINE=1")
    host = urlparse(url).hostname or url
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        raise OSError(f"cannot reach {host}: {exc}") from exc


def fall_back_or_raise(err: MissingWeightsError, allow_random: bool, cause: BaseException | None = None) -> None:
    """Raise ``err``, or (``allow_random``) log it and let the caller build random weights."""
    if not allow_random:
        raise err from cause
    log.warning("%s; using random initialisation", err)


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


@contextmanager
def hub_downloads_guarded() -> Iterator[None]:
    """:func:`hf_hub_offline` while downloads are off (``CLIPCOMPARE_OFFLINE``), else nothing: around
    open_clip calls that may fetch from the hub on their own (a Hugging Face tokenizer or text tower)."""
    if downloads_allowed():
        yield
    else:
        with hf_hub_offline():
            yield


def hf_cached(repo: str, names: list[str]) -> str | None:
    """The first of ``names`` that the Hugging Face cache holds for ``repo`` (main), without any network."""
    from huggingface_hub import try_to_load_from_cache

    for name in names:
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str):
            return found
    return None


def not_in_hf_cache(name: str, repo: str, needed: str, config_name: str, hint: str = "") -> MissingWeightsError:
    """The one-line error for a repo the Hugging Face cache does not hold: what is ``needed``, where the cache
    is, and the command that fetches it where there is network; ``hint`` is appended as it is."""
    from huggingface_hub import constants

    return MissingWeightsError(
        f"{name} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}): need {needed} of {repo}; fetch them "
        f"with `hf download {repo}` (or huggingface-cli download) where there is network, into the cache HF_HOME / "
        f"HF_HUB_CACHE name{hint}", config_name)


# --------------------------------------------------------------------------- reading a user's file


def is_torchscript(path: Path) -> bool:
    """OpenAI's released .pt files are TorchScript archives (zip with ``code/`` and ``constants.pkl``).

    ``constants.pkl`` at the archive's top is what makes ``torch.load`` hand a zip to ``torch.jit.load``
    (``torch.serialization._is_torchscript_zip``): only then may the file be read without
    ``weights_only``, so a zip that merely has a ``code/`` folder is still read weights-only.
    """
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    top_constants = any(n.count("/") == 1 and n.endswith("/constants.pkl") for n in names)
    return top_constants and any("/code/" in n for n in names)


def error_reason(exc: BaseException) -> str:
    """Why reading failed, in one short line, never empty.

    torch's weights-only refusal is several paragraphs; its one informative line is the unpickler's
    (``Unsupported global: GLOBAL posix.system ...``, ``Unsupported operand 149``). Otherwise the first
    sentence of the first line; the exception's type when it says nothing (``EOFError``).
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "WeightsUnpickler error:" in line:
            detail = line.partition("WeightsUnpickler error:")[2].strip()
            detail = detail.split(". ")[0].rstrip(".")
            return f"not a plain tensor file, refused by torch's weights-only unpickler ({detail})"
    if not lines:
        return type(exc).__name__
    first = lines[0]
    sentence, dot, rest = first.partition(". ")
    return sentence if dot and len(first) > 120 else first


@contextmanager
def quiet_warnings() -> Iterator[None]:
    """Warnings raised while reading a user's file (torch's pickle-protocol note...) go to the debug
    log, not stderr: an error that follows them is the one line the user needs."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                log.debug("while reading weights: %s: %s", w.category.__name__, w.message)


def check_weights_file(path: Path) -> Path:
    """``path`` when it is a non-empty file; else the one-line UserError every loader gives for it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"cannot read weights file {path}: the file is empty")
    return path


def read_weights(path: Path) -> Any:
    """What ``path`` holds (a state dict, a checkpoint dict, a TorchScript module), read without running
    any pickled code; :class:`UserError` ``cannot read weights file PATH: REASON`` when it cannot be read."""
    path = check_weights_file(path)
    try:
        with quiet_warnings():
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                return load_file(str(path))
            if is_torchscript(path):
                return torch.jit.load(str(path), map_location="cpu")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # every way a file can be unreadable means the same to the user
        raise UserError(f"cannot read weights file {path}: {error_reason(exc)}") from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a weights file (a checkpoint's ``state_dict``, ``module.`` prefixes dropped)."""
    obj = read_weights(path)
    if isinstance(obj, torch.jit.ScriptModule):
        obj = obj.state_dict()
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"cannot read weights file {path}: it holds a {type(obj).__name__}, not a state dict of tensors")
    # checkpoints saved from DataParallel/DDP prefix every key with "module."
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """``model.load_state_dict(state, strict=True)``; a mismatch is one line naming the file."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{path} does not match the model's architecture ({error_reason(exc)})") from None
