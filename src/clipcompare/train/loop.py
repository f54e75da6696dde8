"""One training epoch, and the validation pass run after each.

A step draws ``accum_freq`` micro-batches of ``batch_size`` images, pairs each image with one of
its captions' cached text embeddings, and minimises open_clip's ``ClipLoss`` (features gathered
across processes under torchrun). With ``accum_freq > 1`` it does what open_clip's trainer does:
features of every micro-batch first (no grad), then each micro-batch again with grad against the
whole step's features, so the contrastive batch is the full ``batch_size × accum_freq``. Unlike
open_clip, the temperature takes its gradient from one of those passes, not from each: the step's
update then equals one batch of ``batch_size × accum_freq`` (for a backbone without batch statistics;
BatchNorm sees micro-batches), which a test checks.

Which caption: in epoch ``e`` image ``i`` uses caption ``c[i]`` where
``c = numpy.random.default_rng([seed, e, 1]).integers(0, 5, n_images)``; the image order is
``numpy.random.default_rng([seed, e, 0]).permutation(images)``, cut into equal shards per process.
Both depend only on (seed, epoch), which is what makes a resumed epoch identical.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from tqdm import tqdm

from clipcompare.errors import UserError
from clipcompare.fileio import append_line, atomic_write_bytes
from clipcompare.models.contrastive import ContrastiveModel, Normalize
from clipcompare.retrieval import recalls_of_loaded
from clipcompare.train.distributed import DistInfo, barrier, mean_over_processes, min_over_processes

log = logging.getLogger(__name__)

KILL_ENV = "CLIPCOMPARE_TRAIN_KILL_AFTER_STEP"  # test hook: SIGKILL this process after that global step


def epoch_order(valid: Sequence[int], seed: int, epoch: int, dist: DistInfo) -> np.ndarray:
    """This process's images for ``epoch``, in order (equal-length shards, the remainder dropped)."""
    order = np.random.default_rng([seed, epoch, 0]).permutation(np.asarray(valid, dtype=np.int64))
    per = len(order) // dist.world_size
    return order[: per * dist.world_size][dist.rank:: dist.world_size]


def epoch_captions(n_images: int, seed: int, epoch: int, per_image: int = 5) -> np.ndarray:
    """The caption number (0..4) each image uses in ``epoch``."""
    return np.random.default_rng([seed, epoch, 1]).integers(0, per_image, n_images)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class Trainer:
    """Everything one optimizer step touches."""

    model: ContrastiveModel
    forward: Callable[..., Any]  # the model, or its DDP / compiled wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: Callable[[int], float]
    loss_fn: torch.nn.Module
    text_emb: torch.Tensor  # train caption embeddings [n_captions, D], on the device
    caption_offset: np.ndarray  # index of each image's first caption in text_emb
    device: torch.device
    dist: DistInfo
    precision: str = "fp32"
    accum_freq: int = 1
    grad_clip: float | None = None
    channels_last: bool = False
    normalize: Normalize = field(default_factory=Normalize)

    def inputs(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.normalize(pixels.to(self.device, non_blocking=True))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def step(self, micro: list[tuple[torch.Tensor, torch.Tensor]], captions: np.ndarray, global_step: int) -> dict | None:
        """One optimizer step over ``micro`` = [(positions, uint8 pixels)]; None when skipped."""
        if self.dist.distributed:  # gathered features must have equal shapes on every process
            micro = [(p[:n], x[:n]) for (p, x), n in ((m, min_over_processes(len(m[0]), self.device)) for m in micro)]
        if any(len(p) < 2 for p, _ in micro):
            log.warning("step %d skipped: a micro-batch has fewer than 2 decodable images", global_step + 1)
            return None
        lr = self.schedule(global_step)
        self.model.train()
        images = [self.inputs(x) for _, x in micro]
        texts = [self.text_emb[torch.from_numpy(self.caption_offset[p.numpy()] + captions[p.numpy()]).to(self.device)]
                 for p, _ in micro]
        loss = self._backward(images[0], texts[0]) if self.accum_freq == 1 else self._backward_accumulated(images, texts)
        self._update()
        images_n = sum(len(p) for p, _ in micro) * self.dist.world_size
        return {"loss": mean_over_processes(float(loss.detach()), self.device), "lr": lr,
                "temperature": float(self.model.logit_scale.detach().exp()), "images": images_n}

    def _backward(self, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        """Gradients of one batch's loss; returns the loss."""
        with autocast(self.device, self.precision):
            feats, _, scale = self.forward(images)
            loss = self.loss_fn(feats, texts, scale)
        self.scaler.scale(loss).backward()
        return loss

    def _backward_accumulated(self, images: list[torch.Tensor], texts: list[torch.Tensor]) -> torch.Tensor:
        """Gradients of the whole step's loss, one micro-batch at a time (open_clip's feature caching);
        returns the last pass's loss (each pass computes the whole step's)."""
        with torch.no_grad(), autocast(self.device, self.precision):
            cached = [self.forward(x)[0] for x in images]
        all_text = torch.cat(texts)
        for j, x in enumerate(images):
            sync = contextlib.nullcontext()
            if self.dist.distributed and j < len(images) - 1:
                sync = self.forward.no_sync()
            with sync, autocast(self.device, self.precision):
                feats, _, scale = self.forward(x)
                if j < len(images) - 1:
                    # every pass computes the whole step's loss, so the temperature would get its
                    # gradient accum_freq times (open_clip's trainer does); the features' passes
                    # each add their own share, which sums to the full batch's gradient
                    scale = scale.detach()
                all_feats = torch.cat(cached[:j] + [feats] + cached[j + 1:])
                loss = self.loss_fn(all_feats, all_text, scale)
            self.scaler.scale(loss).backward()
        return loss

    def _update(self) -> None:
        """The optimizer step on the accumulated gradients (clipped with grad_clip), then the temperature's clamp."""
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.clamp_logit_scale()


def run_epoch(trainer: Trainer, source, *, epoch: int, start_step: int, global_step: int, order: np.ndarray,
              captions: np.ndarray, batch_size: int, on_step: Callable[[dict], None], progress: bool) -> int:
    """Optimizer steps ``start_step..`` of ``epoch``; returns the global step count after them."""
    per_step = batch_size * trainer.accum_freq
    steps = len(order) // per_step
    requests = [order[s * per_step + j * batch_size: s * per_step + (j + 1) * batch_size].tolist()
                for s in range(start_step, steps) for j in range(trainer.accum_freq)]
    batches = source.batches(requests)
    kill_at = int(os.environ.get(KILL_ENV, "0"))
    bar = tqdm(total=steps, initial=start_step, desc=f"epoch {epoch}", unit="step", disable=not progress,
               dynamic_ncols=True, leave=False)
    tick = time.perf_counter()
    for s in range(start_step, steps):
        micro = [next(batches) for _ in range(trainer.accum_freq)]
        out = trainer.step(micro, captions, global_step)
        global_step += 1
        now = time.perf_counter()
        if out is not None:
            record = {"epoch": epoch, "step": global_step, "loss": out["loss"], "lr": out["lr"],
                      "temperature": out["temperature"], "images_per_s": out["images"] / max(now - tick, 1e-9)}
            bar.set_postfix(loss=f"{out['loss']:.3f}", T=f"{out['temperature']:.1f}")
            on_step({**record, "step_in_epoch": s + 1})
        tick = now
        bar.update(1)
        if kill_at and global_step == kill_at:
            # under torchrun every process dies after the main one has saved this step, as a
            # whole-job kill would catch them; without the barrier one rank's death races the save
            barrier()
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    return global_step


# --------------------------------------------------------------------------- validation


@torch.no_grad()
def embed_pixels(encode: Callable[[torch.Tensor], torch.Tensor], source, *, batch_size: int, device: torch.device,
                 precision: str = "fp32", channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions of the images that loaded, L2-normalised embeddings) of every image in ``source``."""
    normalize = Normalize()
    idx = list(range(len(source)))
    positions, feats = [], []
    for pos, pixels in source.batches([idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]):
        if not len(pos):
            continue
        x = normalize(pixels.to(device))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            feats.append(F.normalize(encode(x).float(), dim=-1))
        positions.append(pos)
    return torch.cat(positions), torch.cat(feats)


def retrieval_metrics(positions: torch.Tensor, image_emb: torch.Tensor, text_emb: torch.Tensor,
                      text_image: Sequence[int], *, logit_scale: float | None = None,
                      loss_batch: int = 0) -> dict[str, Any]:
    """Recall@1/5/10 both ways (retrieval.recalls_of_loaded) over the images that loaded and their captions;
    with ``logit_scale``, also the validation loss (``validation_loss``)."""
    out, texts, mapping = recalls_of_loaded(image_emb, positions.tolist(), text_emb, text_image)
    if logit_scale is not None:
        first: dict[int, int] = {}
        for j, row in enumerate(mapping.tolist()):
            first.setdefault(row, j)
        paired = texts[torch.tensor([first[r] for r in range(len(positions))])]
        out["val_loss"] = validation_loss(image_emb, paired, logit_scale, loss_batch or len(positions))
    return out


def validation_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: float, batch: int) -> float:
    """ClipLoss over consecutive batches of ``batch`` (image, caption) pairs, averaged over the images."""
    loss_fn, total, scale = ClipLoss(), 0.0, torch.tensor(logit_scale)
    for i in range(0, len(image_emb), batch):
        n = min(batch, len(image_emb) - i)
        total += float(loss_fn(image_emb[i:i + n], text_emb[i:i + n], scale)) * n
    return total / len(image_emb)


def append_jsonl(path: Path, record: dict) -> None:
    append_line(path, json.dumps(record))


def truncate_jsonl(path: Path, keep: Callable[[dict], bool]) -> None:
    """Drop the records a resumed run will write again (written after the checkpoint it resumes from).

    Lines that are not JSON objects (torn by kill -9, or not ours) are dropped too; a file that is not
    text at all is a UserError, so ``--resume`` never overwrites what it cannot read."""
    if not path.is_file():
        return
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"--resume: {path} is not a JSON-lines log (byte {exc.start} is not UTF-8); "
                        "move it aside to resume") from None
    kept = []
    for ln in (ln for ln in text.splitlines() if ln.strip()):
        try:
            record = json.loads(ln)
        except json.JSONDecodeError:  # a line torn by kill -9
            continue
        try:
            if isinstance(record, dict) and keep(record):
                kept.append(ln)
        except (KeyError, TypeError):  # a record without the field (or of another type): not one of ours
            continue
    atomic_write_bytes(path, "".join(k + "\n" for k in kept).encode())
