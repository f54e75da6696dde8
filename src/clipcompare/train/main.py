"""``train(config) -> dict``: set up data, model and optimizer, run the epochs, write the run directory.

Run directory (``config.out``)::

    run.json                  command, settings, split, versions, counts, random_weights, started/finished, device
    log/steps.jsonl           one line per optimizer step
    log/epochs.jsonl          one line per epoch: validation loss and recalls
    retrieval.json            start / trained / reference rows on the validation split
    retrieval_examples.json   a few validation captions with their top-5 images
    checkpoints/latest.pt     resumable (also every --save-every steps); best.pt by mean validation R@1
    cache/                    the --cache-images pixels
"""

from __future__ import annotations

import json
import logging
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipcompare.errors import UserError
from clipcompare.fileio import atomic_write_bytes
from clipcompare.models.contrastive import ContrastiveModel, read_checkpoint
from clipcompare.retrieval import RECALL_KEYS
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
from clipcompare.train.model import build_model, parameter_counts

log = logging.getLogger(__name__)

Announce = Callable[[str], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def make_optimizer(model: ContrastiveModel, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; as open_clip, no weight decay on gains, biases and the temperature."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    plain = [p for n, p in trainable if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n]
    decayed = [p for n, p in trainable if not any(p is q for q in plain)]
    return torch.optim.AdamW([{"params": plain, "weight_decay": 0.0},
                              {"params": decayed, "weight_decay": config.wd}], lr=config.lr)


def _check_precision(config: TrainConfig, device: torch.device) -> None:
    from clipcompare.dtypes import dtype_support

    if config.precision == "fp32":
        return
    support = dtype_support(config.precision, "cuda" if device.type == "cuda" else "cpu")
    if not support.supported:
        raise UserError(f"--precision {config.precision}: {support.note}")
    if support.note:
        log.warning("%s", support.note)


@dataclass
class _Data:
    splits: Any
    train: PixelSource
    val: PixelSource
    train_text: torch.Tensor
    val_text: torch.Tensor
    train_offset: np.ndarray
    val_owner: list[int]


def _load_text(model: ContrastiveModel, tokenizer, config: TrainConfig, images, device: torch.device,
               dist: D.DistInfo) -> tuple[torch.Tensor, np.ndarray, list[int]]:
    from clipcompare.cache import default_cache_dir
    from clipcompare.captions import caption_embeddings
    from clipcompare.models.hashing import model_identity

    texts, owner = images.flat_captions()
    model_id = model_identity(config.text_model, model.text)
    emb = None
    for turn in (True, False):  # the main process fills the cache first, the others read it
        if dist.is_main == turn:
            emb = caption_embeddings(model, tokenizer, texts, model_id=model_id, cache_dir=default_cache_dir(),
                                     device=device)
        D.barrier()
    offset = np.zeros(len(images), dtype=np.int64)
    seen: set[int] = set()
    for t, i in enumerate(owner):
        if i not in seen:
            offset[i] = t
            seen.add(i)
    return emb.to(device).float(), offset, owner


def _pixels(config: TrainConfig, images, dist: D.DistInfo) -> PixelSource:
    cache = config.out_dir / "cache" if config.cache_images else None
    source = None
    for turn in (True, False):  # one process decodes into the cache, the others open it afterwards
        if dist.is_main == turn:
            source = PixelSource(images.name, images.root, images.paths, config.image_size,
                                 workers=config.workers, cache_dir=cache)
        D.barrier()
    return source


def _row(name: str, role: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {"model": name, "role": role, **{k: metrics[k] for k in RECALL_KEYS},
            "images": metrics["images"], "captions": metrics["captions"]}


def _evaluate(model: ContrastiveModel, data: _Data, config: TrainConfig, device: torch.device,
              with_loss: bool = True) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    model.eval()
    positions, emb = embed_pixels(model.encode_image, data.val, batch_size=config.batch_size, device=device,
                                  precision=config.precision, channels_last=config.channels_last)
    scale = float(model.logit_scale.detach().exp()) if with_loss else None
    metrics = retrieval_metrics(positions, emb, data.val_text, data.val_owner, logit_scale=scale,
                                loss_batch=config.batch_size)
    return metrics, positions, emb


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
    from clipcompare.data.coco import load_caption_splits

    if not dist.is_main:  # one voice under torchrun
        announce = log.debug
    stored = check_run_dir(config, dist.world_size)
    D.barrier()  # every process has checked the directory before the main one writes into it
    out = config.out_dir
    device = dist.device
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: CUDA is not available on this machine")
    _check_precision(config, device)
    splits = load_caption_splits(Path(config.coco) if config.coco else None, split=config.split,
                         train_size=config.train_size, val_size=config.val_size,
                         captions_file=Path(config.captions) if config.captions else None, seed=config.seed)
    if splits.train is None or splits.val is None or not len(splits.train) or not len(splits.val):
        raise UserError("training needs a train and a validation split with images")

    ckpt_path = out / "checkpoints" / "latest.pt"
    ckpt = read_checkpoint(ckpt_path) if stored is not None and ckpt_path.is_file() else None
    seed_everything(config.seed)
    built = build_model(config, keep_clip_visual=ckpt is None and dist.is_main)
    model = built.model.to(device)
    if config.channels_last:
        model.visual.to(memory_format=torch.channels_last)
    counts = parameter_counts(model)
    if built.random_weights:
        announce(f"WARNING: random weights for {', '.join(built.random_weights)} (--allow-random): "
                 "the run shows that training works, its numbers mean nothing")
    announce(f"parameters: trainable {counts['trainable']:,} (backbone {counts['backbone']:,} + head "
             f"{counts['head']:,}" + (" + temperature 1" if counts["temperature"] else "") +
             f"), frozen {counts['frozen']:,} (text tower of {config.text_model})")

    train_text, train_offset, _ = _load_text(model, built.tokenizer, config, splits.train, device, dist)
    val_text, _, val_owner = _load_text(model, built.tokenizer, config, splits.val, device, dist)
    data = _Data(splits, _pixels(config, splits.train, dist), _pixels(config, splits.val, dist),
                 train_text, val_text, train_offset, val_owner)

    run_info = {
        "kind": "train", "command": command, "settings": config.as_dict(), "split": splits.description,
        "versions": versions(), "counts": {"trainable": counts["trainable"], "frozen": counts["frozen"],
                                           "detail": counts},
        "random_weights": built.random_weights, "started": now_iso(), "finished": None,
        "device": str(device), "world_size": dist.world_size,
    }
    if stored is not None:
        run_info["started"] = stored.get("started")
        run_info["resumed"] = [*stored.get("resumed", []), now_iso()]
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "run.json", run_info)

    # the two reference rows are computed once, before any training, and kept in the checkpoint
    if ckpt is None:
        start_rows: list[dict] = []
        if dist.is_main:
            metrics, _, _ = _evaluate(model, data, config, device, with_loss=False)
            start_rows.append(_row(f"{config.image_model} + untrained head", "start", metrics))
            if built.clip_visual is not None:
                from types import SimpleNamespace

                from clipcompare.retrieval import evaluate as retrieval_evaluate

                # the text model's own image tower, through its own preprocessing, against the same captions
                ref = SimpleNamespace(encode_image=built.clip_visual.to(device).eval())
                with torch.no_grad():
                    metrics = retrieval_evaluate(ref, splits.val, tokenizer=None, preprocess=built.clip_preprocess,
                                                 batch_size=config.batch_size, device=device, workers=config.workers,
                                                 text_embeddings=val_text)
                start_rows.append(_row(f"{config.text_model} (its own image tower)", "reference", metrics))
            for r in start_rows:
                announce(_row_line(r))
        built.clip_visual = None
    else:
        start_rows = list(ckpt["training"]["start_rows"])

    optimizer = make_optimizer(model, config)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")

    valid = data.train.valid_indices() or list(range(len(splits.train)))
    per_step = config.batch_size * config.accum_freq
    steps_per_epoch = len(epoch_order(valid, config.seed, 0, dist)) // per_step
    if steps_per_epoch < 1:
        raise UserError(f"{len(valid)} training images cannot fill one step of {per_step} images × "
                        f"{dist.world_size} process(es); lower --batch-size or --accum-freq")
    from open_clip_train.scheduler import cosine_lr

    schedule = cosine_lr(optimizer, config.lr, config.warmup, steps_per_epoch * config.epochs)

    epoch, step_in_epoch, global_step, best = 0, 0, 0, -1.0
    history: list[dict] = []
    if ckpt is not None:
        state = ckpt["training"]
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        epoch, step_in_epoch, global_step, best = state["epoch"], state["step_in_epoch"], state["global_step"], state["best"]
        history = list(state["history"])
        announce(f"resuming {out} at epoch {epoch}, step {step_in_epoch} of {steps_per_epoch} (global step {global_step})")
    if dist.is_main:
        truncate_jsonl(out / "log" / "steps.jsonl", lambda r: r["step"] <= global_step)
        truncate_jsonl(out / "log" / "epochs.jsonl", lambda r: r["epoch"] < epoch)

    forward: Any = model
    if dist.distributed:
        forward = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        forward = torch.compile(forward)
    from open_clip.loss import ClipLoss

    loss_fn = ClipLoss(gather_with_grad=dist.distributed, cache_labels=True, rank=dist.rank,
                       world_size=dist.world_size)
    trainer = Trainer(model, forward, optimizer, scaler, schedule, loss_fn, train_text, train_offset, device, dist,
                      precision=config.precision, accum_freq=config.accum_freq, grad_clip=config.grad_clip,
                      channels_last=config.channels_last)

    def save(path: Path, position: tuple[int, int, int], *, resumable: bool = True) -> None:
        training = None
        if resumable:
            training = {"epoch": position[0], "step_in_epoch": position[1], "global_step": position[2],
                        "best": best, "history": history, "start_rows": start_rows,
                        "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state()}
        save_checkpoint(path, model, config.as_dict(), training=training)

    def on_step(record: dict) -> None:
        s = record.pop("step_in_epoch")
        if dist.is_main:
            append_jsonl(out / "log" / "steps.jsonl", record)
            if config.save_every and record["step"] % config.save_every == 0:
                save(ckpt_path, (record["epoch"], s, record["step"]))

    last = None  # the final weights' validation pass, reused for retrieval.json below
    while epoch < config.epochs:
        order = epoch_order(valid, config.seed, epoch, dist)
        captions = epoch_captions(len(splits.train), config.seed, epoch)
        global_step = run_epoch(trainer, data.train, epoch=epoch, start_step=step_in_epoch, global_step=global_step,
                                order=order, captions=captions, batch_size=config.batch_size, on_step=on_step,
                                progress=dist.is_main and progress)
        if dist.is_main:
            last = _evaluate(model, data, config, device)
            metrics = last[0]
            record = {"epoch": epoch, "val_loss": metrics["val_loss"], **{k: metrics[k] for k in RECALL_KEYS},
                      "mean_recall@1": metrics["mean_recall@1"]}
            history.append(record)
            append_jsonl(out / "log" / "epochs.jsonl", record)
            announce(f"epoch {epoch}: val loss {record['val_loss']:.4f}, R@1 image→text "
                     f"{record['text_retrieval_recall@1']:.2%}, text→image {record['image_retrieval_recall@1']:.2%}")
            if record["mean_recall@1"] > best:
                best = record["mean_recall@1"]
                save(out / "checkpoints" / "best.pt", (epoch + 1, 0, global_step), resumable=False)
            save(ckpt_path, (epoch + 1, 0, global_step))
        D.barrier()
        epoch, step_in_epoch = epoch + 1, 0

    summary: dict[str, Any] = {"out": str(out), "counts": counts, "epochs": history}
    if dist.is_main:
        # the last epoch's pass saw these weights already; a run resumed past its last epoch has none
        metrics, positions, emb = last or _evaluate(model, data, config, device, with_loss=False)
        rows = [start_rows[0], _row(f"trained ({out.name})", "trained", metrics), *start_rows[1:]]
        retrieval = {"split": splits.description, "rows": rows}
        _write_json(out / "retrieval.json", retrieval)
        _write_json(out / "retrieval_examples.json", _examples(data, positions, emb, config.seed))
        failed = {"train": len(data.train.failed), "val": len(data.val.failed)}
        run_info.update(finished=now_iso(), skipped_images=failed)
        _write_json(out / "run.json", run_info)
        summary.update(retrieval=retrieval, skipped_images=failed)
    return summary


def _row_line(row: dict) -> str:
    return (f"{row['role']} ({row['model']}): R@1 image→text {row['text_retrieval_recall@1']:.2%}, "
            f"text→image {row['image_retrieval_recall@1']:.2%}")


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())
