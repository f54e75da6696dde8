"""Goal: evaluate from CLIP_benchmark tar shards (``--dataset wds=``) >= 0.95x evaluate from the same images as a folder, on CPU.

Measured in one run on random weights: ~200 generated 500×375 JPEGs in 20 ImageNet classes, as
wnid folders and as a CLIP_benchmark webdataset of the same files (``test/nshards.txt``,
``test/K.tar`` of ``s0000123.jpg`` + ``.cls``, ``classnames.txt``; written with :mod:`tarfile` in
the layout ``clip_benchmark_export_wds`` writes, so the bytes are the folder's). Each side is
evaluate's own work for one dataset, timed from the ``--dataset`` argument: scanning the dataset
(folder listing / shard headers), then the per-dataset loop (decode, preprocess, ResNet-50 and CLIP
RN50 forwards, Parquet parts, merge) into a fresh run directory, with the same loaded models. The
rounds interleave the two sides (alternating which goes first) and the medians are compared.

    .venv/bin/python benchmarks/wds_speed.py                 # exits 1 if the goal is missed
    .venv/bin/python benchmarks/wds_speed.py --images-per-class 2 --rounds 1 --models resnet18 clip:tiny-RN-quickgelu
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from goals import report_goals  # benchmarks/goals.py, beside this script

from clipcompare.data import load_datasets
from clipcompare.data.synthetic import make_image_folder
from clipcompare.evaluation import EvaluateOptions, load_classifiers, resolve_device, run_dataset
from clipcompare.evaluation.store import RunStore, SkipLog
from clipcompare.imagenet import imagenet_classes
from clipcompare.models.spec import DEFAULT_MODELS, parse_spec
from clipcompare.runtime import steady_heap


def write_webdataset(folder: Path, wnids: list[str], out: Path, per_shard: int) -> Path:
    """The folder's files as CLIP_benchmark's exporter lays them out (``path_to_bytes``: files copied)."""
    by_wnid = {c.wnid: c.clip_name for c in imagenet_classes()}
    files = [(p, k) for k, w in enumerate(wnids) for p in sorted((folder / w).iterdir())]
    (out / "test").mkdir(parents=True)
    (out / "classnames.txt").write_text("".join(by_wnid[w] + "\n" for w in wnids))
    shards = 0
    for start in range(0, len(files), per_shard):
        with tarfile.open(out / "test" / f"{shards}.tar", "w") as tar:
            for index, (path, label) in enumerate(files[start:start + per_shard], start):
                for ext, data in (("jpg", path.read_bytes()), ("cls", str(label).encode())):
                    info = tarfile.TarInfo(f"s{index:07d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shards += 1
    (out / "test" / "nshards.txt").write_text(f"{shards}\n")
    return out


def evaluate_images_per_s(classifiers, dataset_arg: str, out: Path, options: EvaluateOptions,
                          device: torch.device) -> float:
    """Scan ``dataset_arg`` and run evaluate's per-dataset loop on it: images per second of wall time."""
    start = time.perf_counter()
    (ds,) = load_datasets([dataset_arg])
    store, skips = RunStore(out), SkipLog(out / "skipped.jsonl")
    try:
        run_dataset(ds, classifiers, store, skips, options, device, {})
    finally:
        skips.close()
    return len(ds) / (time.perf_counter() - start)


def build_parser() -> argparse.ArgumentParser:
    """The script's options (tests/test_docs.py checks the documented examples against them)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images-per-class", type=int, default=10, help="× 20 classes (default 200 images)")
    ap.add_argument("--per-shard", type=int, default=64, help="samples per tar shard (default 64)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0, help="decode workers (the CLI default on CPU: 0)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved folder/shards rounds (default 5)")
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="SPEC",
                    help=f"model specs (default: {' '.join(DEFAULT_MODELS)})")
    return ap


def main() -> int:
    args = build_parser().parse_args()
    logging.basicConfig(level=logging.ERROR)
    device = resolve_device("cpu")
    allocator = steady_heap()  # what evaluate applies on CPU
    with tempfile.TemporaryDirectory() as tmp:
        wnids = [c.wnid for c in imagenet_classes()[::50]]  # 20 classes spread over the 1000
        root = make_image_folder(Path(tmp) / "folder", wnids, args.images_per_class)
        wds = write_webdataset(root, wnids, Path(tmp) / "wds", args.per_shard)
        options = EvaluateOptions(out=Path(tmp), batch_size=args.batch_size, workers=args.workers, device="cpu",
                                  allow_random=True, templates="single", progress=False, cache_dir=Path(tmp) / "cache")
        classifiers = load_classifiers([parse_spec(m) for m in args.models], options, device)
        (ds,) = load_datasets([f"folder={root}"])
        for clf in classifiers:
            clf.prepare(ds.classes)  # the zero-shot head outside the timed loops (the same classes on both sides)
        sides = {"folder": f"folder={root}", "shards": f"wds={wds}"}
        rates: dict[str, list[float]] = {"folder": [], "shards": []}
        for r in range(args.rounds):
            order = ("folder", "shards") if r % 2 == 0 else ("shards", "folder")
            for side in order:
                rates[side].append(evaluate_images_per_s(classifiers, sides[side], Path(tmp) / f"{side}{r}",
                                                         options, device))
    folder, shards = statistics.median(rates["folder"]), statistics.median(rates["shards"])
    ratio = shards / folder
    print(f"CPU, {torch.get_num_threads()} threads, batch {args.batch_size}, {len(ds)} JPEGs 500x375 in "
          f"{-(-len(ds) // args.per_shard)} shards, models: {', '.join(args.models)}, workers {args.workers}")
    print(f"  allocator: {allocator}")
    print(f"  median of {args.rounds} rounds: folder {folder:8.2f} img/s, shards {shards:8.2f} img/s  (per round "
          f"shards/folder: {', '.join(f'{s:.2f}/{f:.2f}' for s, f in zip(rates['shards'], rates['folder']))})")
    print(f"  ratio shards / folder : {ratio:.3f}")
    return report_goals([("evaluate from tar shards >= 0.95x evaluate from the same images as a folder on CPU",
                          ratio >= 0.95)])


if __name__ == "__main__":
    sys.exit(main())
