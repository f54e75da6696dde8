"""Where each model looks: class-activation maps (pytorch-grad-cam) side by side, and the pointing game.

The package follows the pipeline: :mod:`.layers` (which layer of which architecture), :mod:`.cam`
(a model as logits over a class set, batched maps), :mod:`.geometry` (the preprocessing's crop and
resize undone), :mod:`.boxes` (ILSVRC XML or CSV boxes), :mod:`.pointing` (pointing game, energy in
boxes), :mod:`.figures` (PNG, overlays), :mod:`.gallery` (an evaluate run's gallery images) and
:mod:`.run` (``explain(...)``: the whole job, files written whole).
"""

from clipcompare.explain.cam import METHODS, ClassLogits, compute_maps
from clipcompare.explain.layers import TargetLayer, find_layer
from clipcompare.explain.run import RESULT_FILE, ExplainModel, ImageItem, explain, explain_model

__all__ = ["METHODS", "RESULT_FILE", "ClassLogits", "ExplainModel", "ImageItem", "TargetLayer", "compute_maps",
           "explain", "explain_model", "find_layer"]
