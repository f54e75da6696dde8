"""What precision measurements depend on: versions, CPU features, thread count, GPU and its TF32 settings."""

from __future__ import annotations

from typing import Any

import torch

from clipcompare.dtypes import cpu_capability, cpu_flags, cpu_model


def environment_info(device: str, threads: int) -> dict[str, Any]:
    """What the numbers depend on: versions, CPU features, thread count, GPU and its TF32 settings."""
    flags = cpu_flags()
    interesting = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16",
                   "amx_tile", "amx_bf16", "amx_fp16", "asimdhp", "bf16")
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "device": device,
        "threads": threads,
        "cpu": cpu_model(),
        "cpu_capability": cpu_capability(),
        "cpu_flags": [f for f in interesting if f in flags],
        "cuda": None,
    }
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        info["cuda"] = {
            "name": torch.cuda.get_device_name(),
            "capability": f"{major}.{minor}",
            "cuda_version": torch.version.cuda,
            "bf16_supported": torch.cuda.is_bf16_supported(including_emulation=False),
            # "fp32" convolutions use TF32 tensor cores on Ampere+ unless these are off
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        }
    return info
