"""``train(config) -> dict``: set up data, model and optimizer, run the epochs, write the run directory.

Run directory (``config.out``)::

    run.json                  command, settings, split, versions, counts, random_weights, started/finished, device
    log/steps.jsonl           one line per optimizer step
    log/epochs.jsonl          one line per epoch: validation loss and recalls
    retrieval.json            start / trained / reference rows on the validation split
    retrieval_examples.json   a few validation captions with their top-5 images
    checkpoints/latest.pt     resumable (also every --save-every steps); best.pt by mean validation R@1
    cache/                    the --cache-images pixels

A job, in its steps (``_train``)::

    setup           the run directory, device and precision checked; splits, model, caption embeddings
                    (cached), pixels; run.json written. What it returns (``Setup``) stays fixed.
    TrainState      the model with its optimizer, scaler and schedule, the position, the best recall and
                    the epochs' history: what changes, and what a resumable checkpoint holds (with the RNG)
    reference_rows  a new run: the untrained head and the text model's own image tower, evaluated once
    resume          a resumed run: the state, the RNG and those rows from checkpoints/latest.pt
    train_epoch     the steps of one epoch (log_step after each), validation, epochs.jsonl, checkpoints
    finish          retrieval.json, retrieval_examples.json, run.json's end
"""

from __future__ import annotations

import functools
import json
import logging
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from open_clip.loss import ClipLoss
from open_clip_train.scheduler import cosine_lr

from clipcompare.cache import default_cache_dir
from clipcompare.captions import caption_embeddings
from clipcompare.data.coco import CaptionedImages, CaptionSplits, load_caption_splits
from clipcompare.dtypes import dtype_support
from clipcompare.errors import UserError
from clipcompare.fileio import atomic_write_bytes
from clipcompare.models.contrastive import ContrastiveModel, read_checkpoint
from clipcompare.models.hashing import model_identity
from clipcompare.retrieval import RECALL_KEYS
from clipcompare.retrieval import evaluate as retrieval_evaluate
from clipcompare.rundir import LOCK_NAME, RunLock, now_iso, versions
from clipcompare.train import distributed as D
from clipcompare.train.checkpoint import rng_state, save_checkpoint, set_rng_state
from clipcompare.train.config import TrainConfig, difference
from clipcompare.train.images import PixelSource
from clipcompare.train.loop import (
    Trainer,
    append_jsonl,
    embed_pixels,
    epoch_captions,
    epoch_order,
    retrieval_metrics,
    run_epoch,
    truncate_jsonl,
)
from clipcompare.train.model import Built, build_model, parameter_counts

log = logging.getLogger(__name__)

Announce = Callable[[str], None]
LATEST = Path("checkpoints", "latest.pt")  # within the run directory
BEST = Path("checkpoints", "best.pt")
Evaluation = tuple[dict[str, Any], torch.Tensor, torch.Tensor]  # (metrics, positions of the loaded images, embeddings)


def train(config: TrainConfig, *, command: Sequence[str] | None = None, announce: Announce = log.info,
          progress: bool = False) -> dict:
    """Run (or resume) a training run; returns the run's summary (also written to the run directory).

    ``announce`` receives the few lines a person wants to see (counts, per-epoch recalls);
    ``progress`` shows a progress bar per epoch.
    """
    dist = D.init_distributed(config.device)
    # one job writes a run directory at a time: the main process holds its lock for the whole job
    lock = RunLock(config.out_dir, "clipcompare train") if dist.is_main else None
    try:
        if lock is not None:
            lock.acquire()
        return _train(config, dist, list(command or sys.argv), announce, progress)
    finally:
        if lock is not None:
            lock.release()
        D.cleanup()


def _train(config: TrainConfig, dist: D.DistInfo, command: list[str], announce: Announce, progress: bool) -> dict:
    run = setup(config, dist, command, announce if dist.is_main else log.debug)  # one voice under torchrun
    state = TrainState.create(run)
    if run.checkpoint is None:
        state.start_rows = reference_rows(run)
    else:
        resume(state, run)
    if dist.is_main:  # drop what the run logged after the point it continues from
        truncate_jsonl(run.out / "log" / "steps.jsonl", lambda r: r["step"] <= state.global_step)
        truncate_jsonl(run.out / "log" / "epochs.jsonl", lambda r: r["epoch"] < state.epoch)
    trainer = make_trainer(run, state)
    last = None  # the final weights' validation pass, reused by finish
    while state.epoch < config.epochs:
        last = train_epoch(run, state, trainer, progress)
    return finish(run, state, last)


# --------------------------------------------------------------------------- setup


@dataclass
class _Data:
    """The splits, their pixels, and their captions' embeddings by the frozen text tower."""

    splits: CaptionSplits
    train: PixelSource
    val: PixelSource
    train_text: torch.Tensor
    val_text: torch.Tensor
    train_offset: np.ndarray
    val_owner: list[int]


@dataclass
class Setup:
    """What ``setup`` prepares for the job: fixed while it trains."""

    config: TrainConfig
    dist: D.DistInfo
    announce: Announce
    built: Built  # the model, its tokenizer, and (until reference_rows) the text model's own image tower
    counts: dict[str, int]
    data: _Data
    valid: list[int]  # the training images that can be read (all of them when not known up front)
    info: dict[str, Any]  # run.json
    checkpoint: dict[str, Any] | None  # checkpoints/latest.pt of the run being resumed

    @property
    def model(self) -> ContrastiveModel:
        return self.built.model

    @property
    def out(self) -> Path:
        return self.config.out_dir

    @property
    def device(self) -> torch.device:
        return self.dist.device


def setup(config: TrainConfig, dist: D.DistInfo, command: list[str], announce: Announce) -> Setup:
    """Everything before the first step: the run directory checked (UserError for a mismatched resume),
    device and precision checked, the splits loaded, the model built, captions embedded, pixels opened
    (and cached), run.json written."""
    stored = check_run_dir(config, dist.world_size)
    D.barrier()  # every process has checked the directory before the main one writes into it
    if dist.device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: CUDA is not available on this machine")
    _check_precision(config, dist.device)
    splits = load_caption_splits(Path(config.coco) if config.coco else None, split=config.split,
                                 train_size=config.train_size, val_size=config.val_size,
                                 captions_file=Path(config.captions) if config.captions else None, seed=config.seed)
    if splits.train is None or splits.val is None or not len(splits.train) or not len(splits.val):
        raise UserError("training needs a train and a validation split with images")
    latest = config.out_dir / LATEST
    checkpoint = read_checkpoint(latest) if stored is not None and latest.is_file() else None
    built = _build(config, dist, keep_clip_visual=checkpoint is None and dist.is_main)
    counts = parameter_counts(built.model)
    _announce_model(announce, config, built, counts)
    data = _load_data(built, config, splits, dist)
    info = _run_info(config, dist, command, splits, built, counts, stored)
    valid = data.train.valid_indices() or list(range(len(splits.train)))
    run = Setup(config, dist, announce, built, counts, data, valid, info, checkpoint)
    steps_per_epoch(run)  # refused here, before run.json exists: a run that cannot take a step leaves none behind
    if dist.is_main:
        config.out_dir.mkdir(parents=True, exist_ok=True)
        _write_json(config.out_dir / "run.json", info)
    return run


def check_run_dir(config: TrainConfig, world_size: int = 1) -> dict[str, Any] | None:
    """The stored run.json when resuming with the same settings and number of processes; UserError
    for any mismatch."""
    out = config.out_dir
    run_json = out / "run.json"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if not run_json.is_file():
        if config.resume:
            raise UserError(f"--resume: {out} holds no run to resume (no run.json)")
        if out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()):  # our own lock is not a run
            raise UserError(f"--out {out} is not empty and holds no run; choose a new directory")
        return None
    if not config.resume:
        raise UserError(f"--out {out} already holds a run; pass --resume to continue it, or choose a new directory")
    try:
        stored = json.loads(run_json.read_text(encoding="utf-8"))
        old = TrainConfig.from_dict(stored["settings"]).identity()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read {run_json}: {exc}") from None
    if old != config.identity():
        raise UserError(f"--resume: settings differ from the run in {out} ({difference(old, config.identity())})")
    before = stored.get("world_size", 1)
    if before != world_size:
        # each process's share of an epoch, the images per step and the learning-rate schedule's
        # length all depend on it: a checkpoint's step means another point of another run
        raise UserError(f"--resume: {out} was trained by {before} process(es), this job has {world_size}; resume "
                        f"it with {before} (torchrun --nproc_per_node × --nnodes) or choose a new --out")
    return stored


def _check_precision(config: TrainConfig, device: torch.device) -> None:
    if config.precision == "fp32":
        return
    support = dtype_support(config.precision, "cuda" if device.type == "cuda" else "cpu")
    if not support.supported:
        raise UserError(f"--precision {config.precision}: {support.note}")
    if support.note:
        log.warning("%s", support.note)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _build(config: TrainConfig, dist: D.DistInfo, *, keep_clip_visual: bool) -> Built:
    """The model, seeded (the random initialisation of a new run), on the training device."""
    seed_everything(config.seed)
    built = build_model(config, keep_clip_visual=keep_clip_visual)
    built.model.to(dist.device)
    if config.channels_last:
        built.model.visual.to(memory_format=torch.channels_last)
    return built


def _announce_model(announce: Announce, config: TrainConfig, built: Built, counts: dict[str, int]) -> None:
    if built.random_weights:
        announce(f"WARNING: random weights for {', '.join(built.random_weights)} (--allow-random): "
                 "the run shows that training works, its numbers mean nothing")
    announce(f"parameters: trainable {counts['trainable']:,} (backbone {counts['backbone']:,} + head "
             f"{counts['head']:,}" + (" + temperature 1" if counts["temperature"] else "") +
             f"), frozen {counts['frozen']:,} (text tower of {config.text_model})")


def _load_data(built: Built, config: TrainConfig, splits: CaptionSplits, dist: D.DistInfo) -> _Data:
    train_text, train_offset, _ = _load_text(built, config, splits.train, dist)
    val_text, _, val_owner = _load_text(built, config, splits.val, dist)
    return _Data(splits, _pixels(config, splits.train, dist), _pixels(config, splits.val, dist),
                 train_text, val_text, train_offset, val_owner)


def _load_text(built: Built, config: TrainConfig, images: CaptionedImages,
               dist: D.DistInfo) -> tuple[torch.Tensor, np.ndarray, list[int]]:
    """(every caption's embedding by the frozen text tower, each image's first caption, each caption's image)."""
    texts, owner = images.flat_captions()
    model_id = model_identity(config.text_model, built.model.text)
    emb = None
    for turn in (True, False):  # the main process fills the cache first, the others read it
        if dist.is_main == turn:
            emb = caption_embeddings(built.model, built.tokenizer, texts, model_id=model_id,
                                     cache_dir=default_cache_dir(), device=dist.device)
        D.barrier()
    offset = np.zeros(len(images), dtype=np.int64)
    seen: set[int] = set()
    for t, i in enumerate(owner):
        if i not in seen:
            offset[i] = t
            seen.add(i)
    return emb.to(dist.device).float(), offset, owner


def _pixels(config: TrainConfig, images: CaptionedImages, dist: D.DistInfo) -> PixelSource:
    cache = config.out_dir / "cache" if config.cache_images else None
    source = None
    for turn in (True, False):  # one process decodes into the cache, the others open it afterwards
        if dist.is_main == turn:
            source = PixelSource(images.name, images.root, images.paths, config.image_size,
                                 workers=config.workers, cache_dir=cache)
        D.barrier()
    return source


def _run_info(config: TrainConfig, dist: D.DistInfo, command: list[str], splits: CaptionSplits, built: Built,
              counts: dict[str, int], stored: dict[str, Any] | None) -> dict[str, Any]:
    """run.json as the job starts (``finish`` adds its end); a resumed run keeps its start and lists its resumptions."""
    info = {
        "kind": "train", "command": command, "settings": config.as_dict(), "split": splits.description,
        "versions": versions(), "counts": {"trainable": counts["trainable"], "frozen": counts["frozen"],
                                           "detail": counts},
        "random_weights": built.random_weights, "started": now_iso(), "finished": None,
        "device": str(dist.device), "world_size": dist.world_size,
    }
    if stored is not None:
        info["started"] = stored.get("started")
        info["resumed"] = [*stored.get("resumed", []), now_iso()]
    return info


# --------------------------------------------------------------------------- state, resume, checkpoints


def steps_per_epoch(run: Setup) -> int:
    """Optimizer steps per epoch (each process's equal share of the readable images); UserError below one."""
    config, dist = run.config, run.dist
    per_step = config.batch_size * config.accum_freq
    steps = len(epoch_order(run.valid, config.seed, 0, dist)) // per_step
    if steps < 1:
        raise UserError(f"{len(run.valid)} training images cannot fill one step of {per_step} images × "
                        f"{dist.world_size} process(es); lower --batch-size or --accum-freq")
    return steps


def make_optimizer(model: ContrastiveModel, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; as open_clip, no weight decay on gains, biases and the temperature."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    plain = [p for n, p in trainable if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n]
    decayed = [p for n, p in trainable if not any(p is q for q in plain)]
    return torch.optim.AdamW([{"params": plain, "weight_decay": 0.0},
                              {"params": decayed, "weight_decay": config.wd}], lr=config.lr)


@dataclass
class TrainState:
    """What changes while the run trains. A resumable checkpoint holds it (``training()``), together
    with the weights and the RNG; the schedule is a function of ``global_step`` and needs no state."""

    model: ContrastiveModel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: Callable[[int], Any]  # sets the learning rate of a global step
    steps_per_epoch: int
    epoch: int = 0
    step_in_epoch: int = 0  # steps of ``epoch`` done
    global_step: int = 0
    best: float = -1.0  # the best mean validation R@1 so far (best.pt)
    history: list[dict] = field(default_factory=list)  # epochs.jsonl's records
    start_rows: list[dict] = field(default_factory=list)  # retrieval.json's rows besides the trained one

    @classmethod
    def create(cls, run: Setup) -> TrainState:
        """The state before the first step: a new AdamW, scaler and cosine schedule over all epochs."""
        config = run.config
        steps = steps_per_epoch(run)
        optimizer = make_optimizer(run.model, config)
        scaler = torch.amp.GradScaler(run.device.type, enabled=config.precision == "fp16")
        schedule = cosine_lr(optimizer, config.lr, config.warmup, steps * config.epochs)
        return cls(run.model, optimizer, scaler, schedule, steps)

    def training(self) -> dict[str, Any]:
        """A checkpoint's ``training`` entry: the position and everything needed to continue bit for bit."""
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "best": self.best, "history": self.history, "start_rows": self.start_rows,
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng_state()}

    def load(self, model: dict[str, torch.Tensor], training: dict[str, Any]) -> None:
        """Back to a checkpoint's weights and ``training`` entry (the process's RNG included)."""
        self.model.load_state_dict(model)
        self.optimizer.load_state_dict(training["optimizer"])
        self.scaler.load_state_dict(training["scaler"])
        set_rng_state(training["rng"])
        self.epoch, self.step_in_epoch = training["epoch"], training["step_in_epoch"]
        self.global_step, self.best = training["global_step"], training["best"]
        self.history, self.start_rows = list(training["history"]), list(training["start_rows"])


def resume(state: TrainState, run: Setup) -> None:
    """Continue from checkpoints/latest.pt (``setup`` has refused other settings or process counts)."""
    state.load(run.checkpoint["model"], run.checkpoint["training"])
    run.announce(f"resuming {run.out} at epoch {state.epoch}, step {state.step_in_epoch} of {state.steps_per_epoch} "
                 f"(global step {state.global_step})")


def save(path: Path, state: TrainState, config: TrainConfig, *, resumable: bool = True) -> None:
    """The state's weights and settings at ``path``; ``resumable`` adds ``state.training()``."""
    save_checkpoint(path, state.model, config.as_dict(), training=state.training() if resumable else None)


# --------------------------------------------------------------------------- reference rows


def reference_rows(run: Setup) -> list[dict]:
    """retrieval.json's rows besides the trained one, computed by the main process before any training
    (a resumed run reads them from its checkpoint): the untrained head ("start") and the text model's
    own image tower through its own preprocessing ("reference"), against the same captions."""
    rows: list[dict] = []
    if run.dist.is_main:
        metrics, _, _ = _evaluate(run.model, run.data, run.config, run.device, with_loss=False)
        rows.append(_row(f"{run.config.image_model} + untrained head", "start", metrics))
        if run.built.clip_visual is not None:
            rows.append(_row(f"{run.config.text_model} (its own image tower)", "reference", _clip_metrics(run)))
        for r in rows:
            run.announce(_row_line(r))
    run.built.clip_visual = None  # not needed again: its memory back before training
    return rows


def _clip_metrics(run: Setup) -> dict[str, Any]:
    ref = SimpleNamespace(encode_image=run.built.clip_visual.to(run.device).eval())
    with torch.no_grad():
        return retrieval_evaluate(ref, run.data.splits.val, tokenizer=None, preprocess=run.built.clip_preprocess,
                                  batch_size=run.config.batch_size, device=run.device, workers=run.config.workers,
                                  text_embeddings=run.data.val_text)


def _row(name: str, role: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {"model": name, "role": role, **{k: metrics[k] for k in RECALL_KEYS},
            "images": metrics["images"], "captions": metrics["captions"]}


def _row_line(row: dict) -> str:
    return (f"{row['role']} ({row['model']}): R@1 image→text {row['text_retrieval_recall@1']:.2%}, "
            f"text→image {row['image_retrieval_recall@1']:.2%}")


# --------------------------------------------------------------------------- epochs


def make_trainer(run: Setup, state: TrainState) -> Trainer:
    """The step function's pieces: the model (wrapped by DDP under torchrun, compiled with --compile),
    open_clip's ClipLoss, the cached caption embeddings."""
    config, dist, model = run.config, run.dist, state.model
    forward: Any = model
    if dist.distributed:
        forward = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    if config.compile:
        forward = torch.compile(forward)
    loss_fn = ClipLoss(gather_with_grad=dist.distributed, cache_labels=True, rank=dist.rank,
                       world_size=dist.world_size)
    return Trainer(model, forward, state.optimizer, state.scaler, state.schedule, loss_fn, run.data.train_text,
                   run.data.train_offset, run.device, dist, precision=config.precision,
                   accum_freq=config.accum_freq, grad_clip=config.grad_clip, channels_last=config.channels_last)


def train_epoch(run: Setup, state: TrainState, trainer: Trainer, progress: bool) -> Evaluation | None:
    """The rest of ``state.epoch``'s steps; then, on the main process, validation, epochs.jsonl, best.pt
    when the mean R@1 improved, and latest.pt. Returns that validation pass (None on other processes)."""
    config, dist, epoch = run.config, run.dist, state.epoch
    state.global_step = run_epoch(
        trainer, run.data.train, epoch=epoch, start_step=state.step_in_epoch, global_step=state.global_step,
        order=epoch_order(run.valid, config.seed, epoch, dist),
        captions=epoch_captions(len(run.data.splits.train), config.seed, epoch), batch_size=config.batch_size,
        on_step=functools.partial(log_step, run, state), progress=dist.is_main and progress)
    state.epoch, state.step_in_epoch = epoch + 1, 0
    last = None
    if dist.is_main:
        last = _evaluate(state.model, run.data, config, run.device)
        metrics = last[0]
        record = {"epoch": epoch, "val_loss": metrics["val_loss"], **{k: metrics[k] for k in RECALL_KEYS},
                  "mean_recall@1": metrics["mean_recall@1"]}
        state.history.append(record)
        append_jsonl(run.out / "log" / "epochs.jsonl", record)
        run.announce(f"epoch {epoch}: val loss {record['val_loss']:.4f}, R@1 image→text "
                     f"{record['text_retrieval_recall@1']:.2%}, text→image {record['image_retrieval_recall@1']:.2%}")
        if record["mean_recall@1"] > state.best:
            state.best = record["mean_recall@1"]
            save(run.out / BEST, state, config, resumable=False)
        save(run.out / LATEST, state, config)
    D.barrier()
    return last


def log_step(run: Setup, state: TrainState, record: dict) -> None:
    """After each optimizer step (run_epoch's ``on_step``): the state's position, steps.jsonl, and
    latest.pt every --save-every steps."""
    state.step_in_epoch, state.global_step = record.pop("step_in_epoch"), record["step"]
    if run.dist.is_main:
        append_jsonl(run.out / "log" / "steps.jsonl", record)
        if run.config.save_every and state.global_step % run.config.save_every == 0:
            save(run.out / LATEST, state, run.config)


def _evaluate(model: ContrastiveModel, data: _Data, config: TrainConfig, device: torch.device,
              with_loss: bool = True) -> Evaluation:
    model.eval()
    positions, emb = embed_pixels(model.encode_image, data.val, batch_size=config.batch_size, device=device,
                                  precision=config.precision, channels_last=config.channels_last)
    scale = float(model.logit_scale.detach().exp()) if with_loss else None
    metrics = retrieval_metrics(positions, emb, data.val_text, data.val_owner, logit_scale=scale,
                                loss_batch=config.batch_size)
    return metrics, positions, emb


# --------------------------------------------------------------------------- finish


def finish(run: Setup, state: TrainState, last: Evaluation | None) -> dict[str, Any]:
    """The job's summary; the main process writes retrieval.json, retrieval_examples.json and run.json's end.
    ``last``: the final weights' validation pass when this job ran an epoch (a run resumed past its
    last epoch has none and evaluates them here)."""
    summary: dict[str, Any] = {"out": str(run.out), "counts": run.counts, "epochs": state.history}
    if not run.dist.is_main:
        return summary
    metrics, positions, emb = last or _evaluate(state.model, run.data, run.config, run.device, with_loss=False)
    rows = [state.start_rows[0], _row(f"trained ({run.out.name})", "trained", metrics), *state.start_rows[1:]]
    retrieval = {"split": run.data.splits.description, "rows": rows}
    _write_json(run.out / "retrieval.json", retrieval)
    _write_json(run.out / "retrieval_examples.json", _examples(run.data, positions, emb, run.config.seed))
    failed = {"train": len(run.data.train.failed), "val": len(run.data.val.failed)}
    run.info.update(finished=now_iso(), skipped_images=failed)
    _write_json(run.out / "run.json", run.info)
    summary.update(retrieval=retrieval, skipped_images=failed)
    return summary


def _examples(data: _Data, positions: torch.Tensor, emb: torch.Tensor, seed: int, n: int = 5) -> list[dict]:
    """A few validation captions (seeded choice) with the true image and the model's top 5."""
    val = data.splits.val
    texts, owner = val.flat_captions()
    loaded = set(positions.tolist())
    candidates = [t for t, i in enumerate(owner) if i in loaded]
    picks = np.random.default_rng([seed, 2]).choice(candidates, size=min(n, len(candidates)), replace=False)
    sims = data.val_text[torch.as_tensor(picks)].to(emb.device) @ emb.T
    top = sims.topk(min(5, len(positions)), dim=1).indices.cpu()
    return [{"caption": texts[t], "root": str(val.root), "image": val.paths[owner[t]],
             "top5": [val.paths[int(positions[j])] for j in row]} for t, row in zip(picks.tolist(), top.tolist())]


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())
