"""The evaluation loop: decode each image once, feed every model, store predictions, resume.

A run directory holds::

    run.json                          command, settings, models (+ weight fingerprints), versions, times
    predictions/<dataset>.parquet     one row per image: path, target, per model top-5 ids + probs
    predictions/<dataset>.parts/      part-NNNNN.parquet chunks while a dataset is in progress
    metrics.json                      per dataset and model (see :mod:`clipcompare.evaluation.metrics`)
    skipped.jsonl                     unreadable images with the reason
    .clipcompare.lock                 while a process writes the directory (see rundir.RunLock)

Rows are flushed in chunks written atomically (temp file + rename), so an interrupted run (Ctrl-C,
kill -9) loses at most the chunk in flight; the same command continues with the paths not yet
stored and ends with the same files as an uninterrupted run.

Started by ``torchrun --nproc_per_node N``, every rank predicts a disjoint shard of each dataset's
pending images (``pending[rank::N]``) into its own part files; rank 0 holds the lock, merges and
writes metrics.json. Which images are pending is decided from the stored files, so a run resumes
with any N.

``--decode gpu`` decodes JPEGs on the device (:mod:`clipcompare.data.gpu_decode`); ``--precision``
casts the models as ``clipcompare precision`` does; on CUDA each model's memory format is the
faster of contiguous and channels_last, measured at load time, unless ``--channels-last`` or
``--no-channels-last`` says which.

The package follows the pipeline: :mod:`.options` (what to do), :mod:`.devices` (models on the
device), :mod:`.pipeline` (decode + preprocess), :mod:`.predict` (one dataset into part files),
:mod:`.store` (the run directory's files), :mod:`.metrics` (accuracy from stored predictions) and
:mod:`.run` (the whole job, run.json, metrics.json).
"""

from clipcompare.evaluation.devices import load_classifiers, resolve_device
from clipcompare.evaluation.options import EvaluateOptions
from clipcompare.evaluation.pipeline import input_pipeline
from clipcompare.evaluation.predict import run_dataset
from clipcompare.evaluation.run import EvaluationResult, evaluate

__all__ = ["EvaluateOptions", "EvaluationResult", "evaluate", "input_pipeline", "load_classifiers", "resolve_device",
           "run_dataset"]
