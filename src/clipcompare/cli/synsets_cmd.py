"""``clipcompare synsets``: browse the WordNet hierarchy of the ImageNet-1k classes."""

from __future__ import annotations

import argparse
from typing import Any

from clipcompare.cli.common import int_at_least, print_json

SYNSET_HELP = "a wnid (n02102040), class index (217), WordNet name (dog.n.01), CLIP class name or lemma"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synsets`` subcommand."""
    p = subparsers.add_parser(
        "synsets",
        help="ImageNet classes in the WordNet hierarchy: paths, subtrees, distances",
        description="Look up ImageNet-1k classes and their WordNet 3.0 ancestors. A SYNSET is "
        + SYNSET_HELP + ".",
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("synset", nargs="?", metavar="SYNSET", help="show lemmas, gloss and every root-to-leaf path")
    mode.add_argument("--under", metavar="SYNSET", help="list the classes under SYNSET")
    mode.add_argument("--tree", metavar="SYNSET", help="print the hierarchy below SYNSET with class counts")
    mode.add_argument("--ambiguous", action="store_true", help="names shared by several classes")
    mode.add_argument("--distance", nargs=2, metavar=("A", "B"), help="tree distance and common ancestor of A and B")
    p.add_argument("--depth", type=int_at_least(0), default=3, metavar="N", help="levels shown by --tree (default: 3)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_run)


def _brief(s: Any) -> dict[str, Any]:
    return {"wnid": s.wnid, "name": s.name, "lemma": s.lemmas[0], "index": s.index}


def _label(s: Any) -> str:
    return f"{s.wnid} {s.name}" + (f" (class {s.index})" if s.is_class else "")


def _show(args: argparse.Namespace, W: Any, clip: dict[int, str]) -> None:
    s = W.synset(args.synset)
    paths = W.hypernym_paths(s)
    if args.json:
        print_json({**_brief(s), "lemmas": list(s.lemmas), "gloss": s.gloss, "clip_name": clip.get(s.index),
                    "parents": list(s.parents), "classes_under": W.class_count(s),
                    "paths": [[_brief(x) for x in path] for path in paths]})
        return
    print(_label(s) + (f"  CLIP name: {clip[s.index]!r}" if s.is_class else ""))
    print(f"lemmas: {', '.join(s.lemmas)}")
    print(f"gloss:  {s.gloss}")
    if not s.is_class:
        print(f"classes under it: {W.class_count(s)}")
    print(f"paths from the root ({len(paths)}):")
    for path in paths:
        print("  " + " > ".join(x.lemmas[0] for x in path))


def _under(args: argparse.Namespace, W: Any, clip: dict[int, str]) -> None:
    s = W.synset(args.under)
    rows = [(i, W.synset(i)) for i in W.classes_under(s)]
    if args.json:
        print_json({"synset": _brief(s), "count": len(rows),
                    "classes": [{**_brief(c), "clip_name": clip[i]} for i, c in rows]})
        return
    print(f"{_label(s)}: {len(rows)} class{'es' if len(rows) != 1 else ''}")
    for i, c in rows:
        print(f"  {i:4d}  {c.wnid}  {clip[i]}")


def _tree(args: argparse.Namespace, W: Any) -> None:
    tree = W.subtree(args.tree, args.depth)
    if args.json:
        print_json(tree)
        return

    def show(node: dict[str, Any], level: int) -> None:
        print(f"{'  ' * level}{node['name']} ({node['classes']})")
        for child in node["children"]:
            show(child, level + 1)

    show(tree, 0)


def _ambiguous(args: argparse.Namespace, W: Any, clip: dict[int, str]) -> None:
    names = W.ambiguous_names()
    if args.json:
        print_json([{"name": n, "classes": [{**_brief(W.synset(i)), "clip_name": clip[i],
                                             "gloss": W.synset(i).gloss} for i in idx]}
                    for n, idx in names.items()])
        return
    print(f"{len(names)} names shared by several classes:")
    for n, idx in names.items():
        print(f"{n}:")
        for i in idx:
            s = W.synset(i)
            print(f"  {i:4d}  {s.wnid}  {clip[i]!r}: {s.gloss}")


def _distance(args: argparse.Namespace, W: Any) -> None:
    a, b = (W.synset(x) for x in args.distance)
    lca = W.lowest_common_ancestor(a, b)
    d = W.tree_distance(a, b)
    if args.json:
        print_json({"a": _brief(a), "b": _brief(b), "distance": d, "common_ancestor": _brief(lca),
                    "a_to_ancestor": W.tree_distance(a, lca), "b_to_ancestor": W.tree_distance(b, lca)})
        return
    print(f"{_label(a)}  <->  {_label(b)}")
    print(f"distance: {d} edges ({W.tree_distance(a, lca)} up + {W.tree_distance(b, lca)} down)")
    print(f"common ancestor: {_label(lca)}: {lca.gloss}")


def _run(args: argparse.Namespace) -> int:
    from clipcompare.imagenet import wordnet as W
    from clipcompare.imagenet.classes import imagenet_classes

    clip = {c.index: c.clip_name for c in imagenet_classes()}
    if args.under:
        _under(args, W, clip)
    elif args.tree:
        _tree(args, W)
    elif args.ambiguous:
        _ambiguous(args, W, clip)
    elif args.distance:
        _distance(args, W)
    else:
        _show(args, W, clip)
    return 0
