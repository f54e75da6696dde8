"""FP32 vs FP16 vs BF16 for the image forward pass: latency, memory and prediction drift.

For each model and dtype, a copy of the FP32 model is converted (``cast`` mode: weights and inputs
in the dtype) or kept in FP32 and run under :func:`torch.autocast` (``autocast`` mode). The timed
call is :meth:`Classifier.logits` on a fixed :class:`ClassSet` (for CLIP: ``encode_image`` plus a
negligible matmul with the cached zero-shot head; for ResNet-50: the forward plus an index select).

Measurements, per model × dtype:

* latency per batch size: warm-up, then timed single calls bracketed by device synchronisation,
  with a fixed thread count and the garbage collector paused; median, mean ± std, p90, img/s
  (on CPU, glibc is first told to keep freed memory, see :func:`steady_heap`, so that the result
  does not depend on heap layout left by earlier work);
* memory: bytes of weights after the cast, peak memory of one inference call (CUDA: the caching
  allocator's peak; CPU: the kernel's resident-set high-water mark after resetting it) and, on
  CUDA, a PNG timeline of allocated bytes over a few iterations;
* drift of the class probabilities against FP32 on a handful of images.

Where a dtype is unsupported or only emulated on the device, the result says so in ``notes``
instead of raising, and whatever can still be measured (weight bytes at least) is reported.
Everything here returns data; printing belongs to ``clipcompare.cli.precision_cmd``.
"""

from __future__ import annotations

from clipcompare.precision.drift import prediction_drift
from clipcompare.precision.images import generate_images
from clipcompare.precision.memory import (
    measure_peak_memory,
    reset_rss_peak,
    timeline_from_snapshot,
    weight_bytes,
)
from clipcompare.precision.report import save_report
from clipcompare.precision.run import (
    PrecisionConfig,
    evaluate,
    evaluate_model,
)
from clipcompare.precision.timing import measure_latency
from clipcompare.runtime import steady_heap

__all__ = [
    "PrecisionConfig",
    "evaluate",
    "evaluate_model",
    "generate_images",
    "measure_latency",
    "measure_peak_memory",
    "prediction_drift",
    "reset_rss_peak",
    "save_report",
    "steady_heap",
    "timeline_from_snapshot",
    "weight_bytes",
]
