"""Effective robustness (Taori et al. 2020; Radford et al. 2021, Fig. 13; Miller et al. 2021): the
user's evaluate runs placed among ~1.6k published models on ImageNet's distribution shifts.

:mod:`.reference` (the shipped published accuracies, their provenance and the standard / more-data
rule), :mod:`.fit` (the logit / probit baseline, its bootstrap band, ρ), :mod:`.runs` (points from
run directories), :mod:`.map` (:func:`evaluate`: everything as one dict), :mod:`.summary` (the
short table), :mod:`.plots` (the figures; imports matplotlib when used).
"""

from clipcompare.robustness.map import evaluate
from clipcompare.robustness.reference import load_reference, timm_group
from clipcompare.robustness.runs import RunData, RunPoint, expand_runs, read_run
from clipcompare.robustness.summary import summary_table

__all__ = ["RunData", "RunPoint", "evaluate", "expand_runs", "load_reference", "read_run", "summary_table",
           "timm_group"]
