"""Build ``src/clipcompare/imagenet/data/wordnet_imagenet.json.gz`` from WordNet 3.0.

Run by hand (not at install or test time), from the repository root::

    apt-get install -y wordnet-base          # /usr/share/wordnet/{data,index}.noun
    .venv/bin/python scripts/build_wordnet.py /usr/share/wordnet/data.noun

ImageNet-1k wnids are ``'n' + <8-digit WordNet 3.0 noun offset>``. For the 1000 classes (in timm's
order) the script keeps every ancestor synset reachable through hypernym (``@``) and instance
hypernym (``@i``) pointers, each with its NLTK-style name (``dog.n.01``: first lemma, lowercased,
sense number = 1-based position of the offset in that lemma's ``index.noun`` entry), lemmas, gloss
and parent wnids. The output is deterministic (sorted keys, gzip mtime 0), so rerunning it on the
same WordNet gives the same content; ``tests/test_synsets.py`` checks that when the data exists.

The WordNet licence asks that its notice appear on all copies, so it is stored in the file too.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import logging
import sys
from importlib import resources
from pathlib import Path
from typing import Any

log = logging.getLogger("build_wordnet")

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src/clipcompare/imagenet/data/wordnet_imagenet.json.gz"
FORMAT_VERSION = 1
HYPERNYM_POINTERS = frozenset({"@", "@i"})


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k wnids in class-index order, from timm's metadata."""
    text = resources.files("timm.data").joinpath("_info", "imagenet_synsets.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_data_noun(path: Path) -> tuple[dict[str, dict[str, Any]], str]:
    """``offset -> {words, hypernyms, gloss}`` for every noun synset, and the licence header text."""
    synsets: dict[str, dict[str, Any]] = {}
    licence: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):
                # "  12 use or for distribution.  " -> drop the line number
                _, _, rest = line.strip().partition(" ")
                licence.append(rest.rstrip())
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            offset, w_cnt = fields[0], int(fields[3], 16)
            words = fields[4 : 4 + 2 * w_cnt : 2]
            pos = 4 + 2 * w_cnt
            p_cnt = int(fields[pos])
            pointers = [fields[pos + 1 + 4 * k : pos + 5 + 4 * k] for k in range(p_cnt)]
            hypernyms = [off for sym, off, ptr_pos, _ in pointers if sym in HYPERNYM_POINTERS and ptr_pos == "n"]
            synsets[offset] = {"words": words, "hypernyms": hypernyms, "gloss": gloss.strip()}
    return synsets, "\n".join(licence).strip() + "\n"


def parse_index_noun(path: Path) -> dict[str, list[str]]:
    """``lemma -> [offset, ...]`` in sense order (the order NLTK numbers senses by)."""
    out: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):
                continue
            fields = line.split()
            lemma, synset_cnt, p_cnt = fields[0], int(fields[2]), int(fields[3])
            # lemma pos synset_cnt p_cnt [ptr_symbol]*p_cnt sense_cnt tagsense_cnt offsets...
            out[lemma] = fields[4 + p_cnt + 2 : 4 + p_cnt + 2 + synset_cnt]
    return out


def nltk_name(offset: str, words: list[str], index: dict[str, list[str]]) -> str:
    """``dog.n.01``-style name, computed the way NLTK does it."""
    lemma = words[0].lower()
    return f"{lemma}.n.{index[lemma].index(offset) + 1:02d}"


def build(data_noun: Path, index_noun: Path | None = None, wnids: list[str] | None = None) -> dict[str, Any]:
    """The JSON-able hierarchy for ``wnids`` (default: ImageNet-1k) from WordNet's noun files."""
    index_noun = index_noun or data_noun.with_name("index.noun")
    wnids = list(wnids) if wnids is not None else imagenet_wnids()
    data, licence = parse_data_noun(data_noun)
    index = parse_index_noun(index_noun)

    synsets: dict[str, dict[str, Any]] = {}
    todo = [w[1:] for w in wnids]
    while todo:
        offset = todo.pop()
        wnid = "n" + offset
        if wnid in synsets:
            continue
        if offset not in data:
            raise KeyError(f"{wnid} is not a WordNet 3.0 noun synset in {data_noun}")
        entry = data[offset]
        synsets[wnid] = {
            "name": nltk_name(offset, entry["words"], index),
            "lemmas": [w.replace("_", " ") for w in entry["words"]],
            "gloss": entry["gloss"],
            "parents": sorted("n" + h for h in entry["hypernyms"]),
        }
        todo.extend(entry["hypernyms"])
    log.info("%d classes -> %d synsets", len(wnids), len(synsets))
    return {
        "format": FORMAT_VERSION,
        "source": "WordNet 3.0 (Princeton University), noun hypernyms (@, @i) of the ImageNet-1k classes",
        "license": licence,
        "classes": wnids,
        "synsets": synsets,
    }


def dump(obj: dict[str, Any]) -> bytes:
    """Deterministic gzip'd compact JSON (sorted keys, no timestamp or file name in the header)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(text.encode("utf-8"))
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_noun", type=Path, help="WordNet 3.0 data.noun (e.g. /usr/share/wordnet/data.noun)")
    parser.add_argument("--index-noun", type=Path, help="index.noun (default: next to data.noun)")
    parser.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT, help=f"output (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    obj = build(args.data_noun, args.index_noun)
    blob = dump(obj)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(blob)
    log.info("wrote %s (%d bytes)", args.out, len(blob))
    return 0


if __name__ == "__main__":
    sys.exit(main())
