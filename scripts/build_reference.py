"""Build ``src/clipcompare/robustness/data/reference.csv.gz`` from the published tables.

    python scripts/build_reference.py [REFERENCE_DIR]   (default ../shared/reference)

REFERENCE_DIR holds timm's ``results/`` CSVs under ``timm/`` and open_clip's ``docs/`` CSVs under
``open_clip/`` (see its README.md for commits and licenses). Kept: each model's name, resolution and
top-1 per dataset (percent); timm's top-5, parameter counts, crops and ranks are dropped. The output
is deterministic (sorted, fixed float format, gzip without a timestamp).
"""

from __future__ import annotations

import gzip
import io
import shutil
import sys
from pathlib import Path

import pandas as pd

from clipcompare.robustness.reference import ACCURACY_COLUMNS, DATA_FILE, timm_group

TIMM_FILES = {
    "imagenet": "results-imagenet.csv",
    "imagenet-v2": "results-imagenetv2-matched-frequency.csv",
    "imagenet-sketch": "results-sketch.csv",
    "imagenet-r": "results-imagenet-r.csv",
    "imagenet-a": "results-imagenet-a.csv",
    "imagenet-r-clean": "results-imagenet-r-clean.csv",
    "imagenet-a-clean": "results-imagenet-a-clean.csv",
}
OPEN_CLIP_COLUMNS = {
    "ImageNet 1k": "imagenet", "ImageNet v2": "imagenet-v2", "ImageNet Sketch": "imagenet-sketch",
    "ImageNet-R": "imagenet-r", "ImageNet-A": "imagenet-a", "ObjectNet": "objectnet",
}


def timm_rows(folder: Path) -> pd.DataFrame:
    """One row per (timm weight, resolution) with an ImageNet result (a shift file's extra rows are dropped);
    the smallest resolution (timm's default) is the primary row."""
    merged = None
    for column, name in TIMM_FILES.items():
        part = pd.read_csv(folder / name, usecols=["model", "img_size", "top1"]).rename(columns={"top1": column})
        merged = part if merged is None else merged.merge(part, on=["model", "img_size"], how="left")
    merged = merged.sort_values(["model", "img_size"]).reset_index(drop=True)
    merged["primary"] = ~merged["model"].duplicated()
    merged["group"] = merged["model"].map(timm_group)
    merged["model"] = ["timm:" + m + ("" if p else f"@{s}") for m, s, p in
                       zip(merged["model"], merged["img_size"], merged["primary"])]
    merged["source"] = "timm"
    return merged


def open_clip_rows(folder: Path) -> pd.DataFrame:
    """open_clip's zero-shot rows, as clipcompare's ``clip:ARCH@TAG`` specs, fractions → percent."""
    raw = pd.read_csv(folder / "openclip_results.csv")
    out = pd.DataFrame({"model": "clip:" + raw["name"] + "@" + raw["pretrained"]})
    for src, column in OPEN_CLIP_COLUMNS.items():
        out[column] = raw[src] * 100.0
    out["img_size"] = pd.NA
    out["primary"] = True
    out["group"] = "zero-shot"
    out["source"] = "open_clip"
    return out.sort_values("model").reset_index(drop=True)


def build(reference: Path) -> pd.DataFrame:
    table = pd.concat([timm_rows(reference / "timm"), open_clip_rows(reference / "open_clip")], ignore_index=True)
    if table["model"].duplicated().any():
        raise SystemExit(f"duplicate specs: {sorted(table.loc[table['model'].duplicated(), 'model'])[:5]}")
    for column in ACCURACY_COLUMNS:
        if column not in table:
            table[column] = float("nan")
    return table[["model", "source", "group", "img_size", "primary", *ACCURACY_COLUMNS]]


def main(argv: list[str]) -> int:
    reference = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / ".." / "shared" / "reference"
    table = build(reference)
    text = table.to_csv(index=False, float_format="%.3f", lineterminator="\n")
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as gz:
        gz.write(text.encode())
    DATA_FILE.write_bytes(buf.getvalue())
    for src, name in (("timm", "LICENSE.timm"), ("open_clip", "LICENSE.open_clip")):
        shutil.copyfile(reference / src / "LICENSE", DATA_FILE.parent / name)
    counts = table.groupby("group").size().to_dict()
    print(f"wrote {DATA_FILE} ({len(table)} rows: {counts}; {len(buf.getvalue())} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
