"""Goals: a step on cached caption embeddings >= 1.2x one running the text tower; the loop >= 0.9x a bare step.

Measured in one run on random weights (CPU unless --device says so):

(a) A training step that reads cached caption embeddings is at least 1.2x faster than the same step
    running the frozen text tower on 77-token captions every step (what the reference setup and
    open_clip's trainer with --lock-text do). Same model, optimizer, batch and loss on both sides.
(b) The training loop (pixels from the --cache-images memmap, normalisation, caption lookup, ClipLoss,
    the steps.jsonl log, a resumable checkpoint every --save-every steps) reaches at least 0.9x the
    images/s of a bare forward + backward + optimizer step of the same image tower on ready-made
    tensors. Compared on totals over all rounds, so the checkpoints count in full. A checkpoint of
    the reference model is ~600 MB (weights, frozen text tower, AdamW state): ~0.5-1 s here, the
    time of one batch-8 step, so --save-every 25 costs ~4%; the reference run (125 steps of 128
    images per epoch, checkpoint at epoch ends) pays it once per ~2,000 of these steps.

(a) alternates its two sides over interleaved rounds and compares medians, (b) interleaves too,
because the machine may be shared. Default: ResNet-50 + CLIP ViT-B/32 text tower, batch 8 at 224 px (a few minutes
on 2 cores); on a GPU: --device cuda --precision bf16 --batch-size 128.

    .venv/bin/python benchmarks/train_speed.py        # exits 1 if a goal is missed
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from goals import report_goals  # benchmarks/goals.py, beside this script

from clipcompare.data.synthetic import make_image_folder
from clipcompare.precision.environment import environment_info
from clipcompare.runtime import steady_heap
from clipcompare.train.checkpoint import rng_state, save_checkpoint
from clipcompare.train.config import TrainConfig
from clipcompare.train.distributed import DistInfo
from clipcompare.train.images import PixelSource
from clipcompare.train.loop import Trainer, append_jsonl, autocast, epoch_captions, run_epoch
from clipcompare.train.main import make_optimizer
from clipcompare.train.model import build_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_parser() -> argparse.ArgumentParser:
    """The script's options (tests/test_docs.py checks the documented examples against them)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-model", default="resnet50:IMAGENET1K_V2")
    ap.add_argument("--text-model", default="clip:ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=3, help="(a): steps per side per round")
    ap.add_argument("--loop-steps", type=int, default=10, help="(b): steps per side per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--save-every", type=int, default=25, help="(b) loop side: checkpoint every N steps")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    return ap


def main() -> int:
    args = build_parser().parse_args()
    logging.basicConfig(level=logging.ERROR)
    steady_heap()
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = TrainConfig(out="", image_model=args.image_model, text_model=args.text_model, allow_random=True,
                         batch_size=args.batch_size, image_size=args.image_size, precision=args.precision)
    built = build_model(config)
    model = built.model.to(device).train()
    optimizer = make_optimizer(model, config)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    from open_clip.loss import ClipLoss

    loss_fn = ClipLoss()
    b = args.batch_size
    captions = [f"a photo of {w} number {i} on a table next to a window" for i, w in enumerate(["a cat", "a dog"] * 512)]
    tokens = built.tokenizer(captions).to(device)  # 77 tokens each, as the reference pads them
    with torch.no_grad():
        text_cache = F.normalize(model.encode_text(tokens[:2 * b]).float(), dim=-1)  # stands in for the disk cache
    images = torch.randn(b, 3, args.image_size, args.image_size, device=device)

    def optimizer_step(loss: torch.Tensor) -> None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def step_cached(i: int) -> None:
        with autocast(device, args.precision):
            feats, _, scale = model(images)
            optimizer_step(loss_fn(feats, text_cache[i % 2 * b:(i % 2 + 1) * b], scale))

    def step_text_tower(i: int) -> None:
        with autocast(device, args.precision):
            with torch.no_grad():  # frozen, but run every step
                text = F.normalize(model.encode_text(tokens[i % 2 * b:(i % 2 + 1) * b]), dim=-1)
            feats, _, scale = model(images)
            optimizer_step(loss_fn(feats, text, scale))

    def timed(fn, n: int) -> float:
        sync(device)
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        sync(device)
        return n * b / (time.perf_counter() - start)

    print(f"{args.image_model} + {args.text_model} text tower (random weights), batch {b} at {args.image_size}px, "
          f"{args.precision} on {environment_info(args.device, torch.get_num_threads())['cpu'] if device.type == 'cpu' else torch.cuda.get_device_name()}, "
          f"{torch.get_num_threads()} threads")
    step_cached(0), step_text_tower(0)  # warm-up
    cached, tower = [], []
    for _ in range(args.rounds):
        cached.append(timed(step_cached, args.steps))
        tower.append(timed(step_text_tower, args.steps))
    ratio_a = statistics.median(cached) / statistics.median(tower)
    print(f"(a) step with cached caption embeddings {statistics.median(cached):.2f} img/s vs text tower every step "
          f"{statistics.median(tower):.2f} img/s: {ratio_a:.2f}x")

    # (b) the loop on the image cache vs the bare step on ready-made tensors
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        per_round = args.loop_steps * b
        n_images = per_round * args.rounds
        make_image_folder(tmp / "imgs", ["x"], n_images, size=(320, 240))
        paths = [f"x/{k:03d}.JPEG" for k in range(n_images)]
        source = PixelSource("train", tmp / "imgs", paths, args.image_size, cache_dir=tmp / "cache")
        text_emb = F.normalize(torch.randn(n_images * 5, text_cache.shape[1], device=device), dim=-1)
        from open_clip_train.scheduler import cosine_lr

        schedule = cosine_lr(optimizer, config.lr, 1, 10_000)
        trainer = Trainer(model, model, optimizer, scaler, schedule, loss_fn, text_emb,
                          np.arange(n_images) * 5, device, DistInfo(device=device), precision=args.precision)
        caps = epoch_captions(n_images, 0, 0)

        saves: list[float] = []

        def on_step(record: dict) -> None:  # what train.main does after each step
            record.pop("step_in_epoch")
            append_jsonl(tmp / "log" / "steps.jsonl", record)
            if record["step"] % args.save_every == 0:
                start = time.perf_counter()
                save_checkpoint(tmp / "latest.pt", model, config.as_dict(), training={
                    "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                    "global_step": record["step"]})
                saves.append(time.perf_counter() - start)

        def loop_round(r: int) -> float:
            order = np.arange(r * per_round, (r + 1) * per_round)
            start = time.perf_counter()
            run_epoch(trainer, source, epoch=0, start_step=0, global_step=r * args.loop_steps, order=order,
                      captions=caps, batch_size=b, on_step=on_step, progress=False)
            sync(device)
            return time.perf_counter() - start

        loop_s, bare_s = 0.0, 0.0
        for r in range(args.rounds):
            loop_s += loop_round(r)
            bare_s += per_round / timed(step_cached, args.loop_steps)
        total = per_round * args.rounds
        ratio_b = (total / loop_s) / (total / bare_s)
        print(f"(b) training loop (image cache, log, {len(saves)} checkpoint(s) of "
              f"{(tmp / 'latest.pt').stat().st_size / 1e6 if saves else 0:.0f} MB, "
              f"{statistics.mean(saves) if saves else 0:.2f} s each) {total / loop_s:.2f} img/s vs bare step on "
              f"ready tensors {total / bare_s:.2f} img/s: {ratio_b:.2f}x")
    return report_goals([
        ("(a) a step on cached caption embeddings >= 1.2x a step running the frozen text tower", ratio_a >= 1.2),
        ("(b) the training loop >= 0.9x a bare forward + backward + AdamW step", ratio_b >= 0.9),
    ])


if __name__ == "__main__":
    sys.exit(main())
