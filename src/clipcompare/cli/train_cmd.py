"""`clipcompare train`: contrastive fine-tuning of an image tower into a frozen CLIP text tower's space."""

from __future__ import annotations

import argparse
import sys

from clipcompare.cli.common import int_at_least

EPILOG = """\
Defaults are the reference setup: COCO 2014 seed split (16k train / 4k val), ResNet-50
IMAGENET1K_V2 + Linear-GELU-Linear head, frozen CLIP ViT-B/32 text tower, 224x224 resize.
Several processes: torchrun --nproc_per_node N -m clipcompare train ... (see README)."""


def register(sub: argparse._SubParsersAction) -> None:
    from clipcompare.train.config import PRECISIONS, TrainConfig

    d = TrainConfig(out="")
    p = sub.add_parser(
        "train", help="train an image encoder against a frozen CLIP text tower on COCO captions",
        description="Train an ImageNet backbone + projection head so its embeddings land in a frozen CLIP text "
        "encoder's space (open_clip's ClipLoss), with retrieval recalls per epoch.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument("--coco", metavar="ROOT", help="COCO root (annotations/, train2014/, val2014/)")
    data.add_argument("--split", default=d.split, help="seed (default) or karpathy=FILE (dataset_coco.json)")
    data.add_argument("--train-size", type=int_at_least(1), metavar="N", help="training images (seed: 16000)")
    data.add_argument("--val-size", type=int_at_least(1), metavar="M", help="validation images (seed: 4000)")
    data.add_argument("--captions", metavar="FILE", help="your own data: CSV/TSV/JSONL of image path + caption")
    model = p.add_argument_group("model")
    model.add_argument("--image-model", default=d.image_model, metavar="SPEC", help=f"torchvision or timm: classifier (default {d.image_model})")
    model.add_argument("--text-model", default=d.text_model, metavar="SPEC", help=f"open_clip model (clip:...) or transformers CLIP/SigLIP (hf:ORG/REPO, hf:PATH) whose text tower is frozen (default {d.text_model})")
    model.add_argument("--embed-dim", type=int_at_least(1), help="embedding width (must equal the text tower's)")
    model.add_argument("--image-size", type=int_at_least(8), default=d.image_size, metavar="PX",
                       help=f"images are resized (no crop) to PX x PX (default {d.image_size})")
    model.add_argument("--fixed-temperature", action="store_true", help="keep the temperature at 0.07 instead of learning it")
    model.add_argument("--allow-random", action="store_true", help="random weights when pretrained ones are missing (dry runs)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int_at_least(1), default=d.epochs)
    opt.add_argument("--batch-size", type=int_at_least(2), default=d.batch_size, help="images per process and micro-batch")
    opt.add_argument("--lr", type=float, default=d.lr)
    opt.add_argument("--wd", type=float, default=d.wd, help="AdamW weight decay (not on gains, biases, temperature)")
    opt.add_argument("--warmup", type=int_at_least(0), default=d.warmup, help="linear warm-up steps before the cosine decay")
    opt.add_argument("--accum-freq", type=int_at_least(1), default=d.accum_freq, help="micro-batches per optimizer step")
    opt.add_argument("--grad-clip", type=float, metavar="NORM", help="clip the gradient norm")
    opt.add_argument("--precision", choices=PRECISIONS, default=d.precision)
    opt.add_argument("--channels-last", action="store_true")
    opt.add_argument("--compile", action="store_true", help="torch.compile the model")
    opt.add_argument("--seed", type=int, default=d.seed)
    run = p.add_argument_group("run")
    run.add_argument("--out", required=True, metavar="DIR", help="run directory (logs, checkpoints, retrieval.json)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/latest.pt")
    run.add_argument("--save-every", type=int_at_least(0), default=d.save_every, metavar="N",
                     help="also checkpoint every N optimizer steps (default: epoch ends only)")
    run.add_argument("--cache-images", action="store_true", help="keep resized pixels in a memory-mapped file under DIR/cache")
    run.add_argument("--workers", type=int_at_least(0), default=d.workers, help="image decoding processes")
    run.add_argument("--device", default=d.device, help="cpu or cuda")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from clipcompare.cli.common import format_table
    from clipcompare.retrieval import RECALL_KEYS
    from clipcompare.train.config import TrainConfig
    from clipcompare.train.main import train

    config = TrainConfig(
        out=args.out, coco=args.coco, split=args.split, train_size=args.train_size, val_size=args.val_size,
        captions=args.captions, image_model=args.image_model, text_model=args.text_model, embed_dim=args.embed_dim,
        image_size=args.image_size,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, wd=args.wd, warmup=args.warmup,
        accum_freq=args.accum_freq, grad_clip=args.grad_clip, precision=args.precision,
        channels_last=args.channels_last, compile=args.compile, cache_images=args.cache_images,
        fixed_temperature=args.fixed_temperature, seed=args.seed, workers=args.workers, device=args.device,
        save_every=args.save_every, resume=args.resume, allow_random=args.allow_random,
    )
    summary = train(config, command=["clipcompare", *sys.argv[1:]], announce=print, progress=sys.stderr.isatty())
    if "retrieval" not in summary:  # not the main process under torchrun
        return 0
    header = ["model", "role", "i→t R@1", "R@5", "R@10", "t→i R@1", "R@5", "R@10"]
    body = [[r["model"], r["role"], *(f"{100 * r[k]:.2f}" for k in RECALL_KEYS)] for r in summary["retrieval"]["rows"]]
    print(f"\nretrieval on the validation split ({body and summary['retrieval']['rows'][0]['images']} images), %:")
    print("\n".join(format_table(header, body, [False, False] + [True] * 6, rule=True)))
    skipped = summary.get("skipped_images", {})
    if any(skipped.values()):
        print(f"note: skipped undecodable images: {skipped}")
    print(f"run directory: {summary['out']}")
    return 0
