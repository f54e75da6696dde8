"""Image↔text retrieval: Recall@K both ways (CLIP_benchmark's definition) of CLIP-style models.

The package follows the pipeline the way :mod:`clipcompare.evaluation` does: :mod:`.metrics` (Recall@K
from embeddings: pure functions), :mod:`.encode` (image embeddings; captions come from
:mod:`clipcompare.captions`) and :mod:`.run` (one model on a split, then several into retrieval.json).
"""

from clipcompare.retrieval.encode import encode_images
from clipcompare.retrieval.metrics import RECALL_KEYS, RETRIEVAL_KS, recall_at_k, recall_key, recalls_of_loaded
from clipcompare.retrieval.run import RetrievalOptions, check_retrieval_specs, evaluate, run_retrieval

__all__ = ["RECALL_KEYS", "RETRIEVAL_KS", "RetrievalOptions", "check_retrieval_specs", "encode_images", "evaluate",
           "recall_at_k", "recall_key", "recalls_of_loaded", "run_retrieval"]
