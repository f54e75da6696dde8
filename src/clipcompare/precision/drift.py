"""Prediction drift: class-probability agreement of a lower-precision run with FP32."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class DriftStats:
    """Class-probability agreement of a lower-precision run with FP32 on the same images.

    Probability differences lie in [0, 1]; agreements are fractions of images; KL(fp32 ‖ other)
    is ≥ 0 (averaged and maximised over images).
    """

    images: int
    classes: int
    max_abs_prob_diff: float
    mean_abs_prob_diff: float
    top1_agreement: float
    top5_agreement: float
    top5_k: int
    kl_mean: float
    kl_max: float
    nonfinite_images: int = 0


def prediction_drift(reference_logits: torch.Tensor, other_logits: torch.Tensor) -> DriftStats:
    """Compare softmax probabilities of ``other_logits`` with ``reference_logits`` (both [N, C]).

    Top-5 agreement is the fraction of images whose top-k class *set* is the same (k = min(5, C)).
    Rows where ``other`` is not finite (fp16 overflow) are left out and counted.
    """
    if reference_logits.shape != other_logits.shape or reference_logits.ndim != 2:
        raise ValueError(f"logit shapes differ or are not [N, C]: {tuple(reference_logits.shape)} vs {tuple(other_logits.shape)}")
    ref = reference_logits.detach().to("cpu", torch.float64)
    other = other_logits.detach().to("cpu", torch.float64)
    finite = torch.isfinite(other).all(dim=1) & torch.isfinite(ref).all(dim=1)
    bad = int((~finite).sum())
    ref, other = ref[finite], other[finite]
    n, c = ref.shape
    k = min(5, c)
    if n == 0:
        return DriftStats(0, c, math.nan, math.nan, math.nan, math.nan, k, math.nan, math.nan, bad)
    log_p = F.log_softmax(ref, dim=1)
    log_q = F.log_softmax(other, dim=1)
    p, q = log_p.exp(), log_q.exp()
    diff = (p - q).abs()
    top1 = (ref.argmax(dim=1) == other.argmax(dim=1)).double().mean()
    top_ref = ref.topk(k, dim=1).indices.sort(dim=1).values
    top_other = other.topk(k, dim=1).indices.sort(dim=1).values
    topk = (top_ref == top_other).all(dim=1).double().mean()
    # KL is ≥ 0 in exact arithmetic; clamp the last-bit rounding that can make it -1e-17
    kl = (p * (log_p - log_q)).sum(dim=1).clamp_min(0.0)
    return DriftStats(
        images=n, classes=c,
        max_abs_prob_diff=float(diff.max()), mean_abs_prob_diff=float(diff.mean()),
        top1_agreement=float(top1), top5_agreement=float(topk), top5_k=k,
        kl_mean=float(kl.mean()), kl_max=float(kl.max()), nonfinite_images=bad,
    )
