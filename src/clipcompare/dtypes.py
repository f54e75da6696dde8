"""Dtype names and whether a dtype runs on a device, natively or emulated: CPU flags, CUDA capability.

Task-free: evaluate, classify, train and precision all parse ``--precision`` and check it here.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from clipcompare.errors import UserError

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}


def parse_dtype(name: str) -> str:
    """Canonical dtype name (``fp32``/``fp16``/``bf16``) for a name or alias; UserError otherwise."""
    key = name.strip().lower()
    key = _DTYPE_ALIASES.get(key, key)
    if key not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)}")
    return key


@dataclass
class DtypeSupport:
    """Whether ``dtype`` runs on ``device`` at all, and whether natively (None: cannot tell)."""

    dtype: str
    device: str
    supported: bool
    native: bool | None
    note: str | None = None


@cache
def _cpuinfo() -> dict[str, str]:
    """The first value of each /proc/cpuinfo key (the first CPU's); empty if unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        out.setdefault(key.strip(), value.strip())
    return out


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (x86 ``flags``, Arm ``Features``); empty if unreadable."""
    info = _cpuinfo()
    return frozenset((info.get("flags") or info.get("Features") or "").split())


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo, else what :mod:`platform` says)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_capability() -> str:
    """PyTorch's dispatch level for CPU kernels (``AVX2``, ``AVX512``, ...), or ``unknown``."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # very old or exotic builds
        return "unknown"


# Hardware that computes in the dtype rather than converting to fp32 around every kernel.
_CPU_NATIVE = {
    "bf16": ({"avx512_bf16", "amx_bf16", "bf16"}, "AVX512-BF16/AMX-BF16"),
    "fp16": ({"avx512_fp16", "amx_fp16", "asimdhp"}, "AVX512-FP16/AMX-FP16"),
}


def dtype_support(dtype: str, device: str) -> DtypeSupport:
    """Can ``dtype`` run on ``device``, natively or emulated? Never raises for a known dtype."""
    dtype = parse_dtype(dtype)
    if device == "cuda":
        return _cuda_support(dtype)
    if dtype == "fp32":
        return DtypeSupport(dtype, device, True, True)
    cap = cpu_capability()
    flags = cpu_flags()
    wanted, names = _CPU_NATIVE[dtype]
    if flags:
        native: bool | None = bool(flags & wanted)
    elif "AMX" in cap or {"bf16": "BF16", "fp16": "FP16"}[dtype] in cap:  # flags unreadable: trust e.g. "AVX512_BF16"
        native = True
    else:
        native = None
    note = None
    if native is False:
        note = (f"{dtype} on this CPU (PyTorch capability {cap}, no {names}): kernels run but are emulated "
                f"(converted to fp32 internally), so expect it slower than fp32")
    elif native is None:
        note = f"cannot tell whether this CPU (capability {cap}) has native {dtype} support"
    return DtypeSupport(dtype, device, True, native, note)


def _cuda_support(dtype: str) -> DtypeSupport:
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none"
        return DtypeSupport(dtype, "cuda", False, None,
                            f"CUDA is not available on this machine (torch {torch.__version__}, built with CUDA {built}): "
                            "only weight bytes are reported")
    if dtype == "fp32":
        return DtypeSupport(dtype, "cuda", True, True)
    major, minor = torch.cuda.get_device_capability()
    if dtype == "fp16":
        if (major, minor) < (7, 0):
            return DtypeSupport(dtype, "cuda", True, False,
                                f"fp16 on compute capability {major}.{minor}: no tensor cores, expect little speed-up")
        return DtypeSupport(dtype, "cuda", True, True)
    if not torch.cuda.is_bf16_supported(including_emulation=True):
        return DtypeSupport(dtype, "cuda", False, False, f"bf16 is not supported on this GPU (compute capability {major}.{minor})")
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        return DtypeSupport(dtype, "cuda", True, False,
                            f"bf16 on compute capability {major}.{minor} is emulated (native from 8.0), expect it slow")
    return DtypeSupport(dtype, "cuda", True, True)
