"""metrics.py against plain reference computations that loop over rows."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest

from clipcompare.evaluation.metrics import dataset_metrics, models_in, prob_column, top_column

NAMES = ("tench", "goldfish", "shark", "seashore", "kite", "daisy", "volcano")
MODELS = ("resnet18:IMAGENET1K_V1", "clip:tiny")


def make_predictions(n: int = 80, seed: int = 0) -> pd.DataFrame:
    """Random top-5 lists, right at top-1 about half the time, with a lopsided class mix."""
    rng = np.random.default_rng(seed)
    c = len(NAMES)
    targets = rng.choice(c, size=n, p=[0.3, 0.2, 0.15, 0.15, 0.1, 0.1, 0.0])  # 'volcano' never appears
    data: dict[str, list] = {"path": [f"{NAMES[t]}/img_{i}.jpg" for i, t in enumerate(targets)], "target": targets}
    for m, model in enumerate(MODELS):
        tops, probs = [], []
        for t in targets:
            order = list(rng.permutation(c))
            if rng.random() < 0.4 + 0.2 * m:
                order.remove(t)
                order.insert(0, t)
            tops.append(np.array(order[:5], dtype=np.int32))
            p = np.sort(rng.random(5))[::-1]
            probs.append((p / p.sum()).astype(np.float32))
        data[top_column(model)] = tops
        data[prob_column(model)] = probs
    return pd.DataFrame(data)


def reference(df: pd.DataFrame, model: str) -> dict:
    """The obvious row-by-row computation."""
    n = top1 = top5 = 0
    per_class = defaultdict(lambda: [0, 0])
    pairs: Counter = Counter()
    for _, row in df.iterrows():
        t, top = int(row["target"]), [int(x) for x in row[top_column(model)]]
        n += 1
        top1 += top[0] == t
        top5 += t in top
        per_class[t][0] += 1
        per_class[t][1] += top[0] == t
        if top[0] != t:
            pairs[(NAMES[t], NAMES[top[0]])] += 1
    return {
        "n": n, "top1": top1 / n, "top5": top5 / n,
        "per_class": {NAMES[c]: (tot, hit) for c, (tot, hit) in per_class.items()},
        "mean_per_class": sum(hit / tot for tot, hit in per_class.values()) / len(per_class),
        "pairs": pairs,
    }


@pytest.fixture(scope="module")
def preds() -> pd.DataFrame:
    return make_predictions()


@pytest.fixture(scope="module")
def result(preds) -> dict:
    return dataset_metrics(preds, NAMES, None)


def test_models_found_from_columns(preds):
    assert models_in(preds) == list(MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_accuracies_match_reference(preds, result, model):
    ref = reference(preds, model)
    got = result["models"][model]
    assert got["n"] == ref["n"] == len(preds)
    assert got["top1"] == pytest.approx(ref["top1"])
    assert got["top5"] == pytest.approx(ref["top5"])
    assert got["mean_per_class"] == pytest.approx(ref["mean_per_class"])
    assert {k: (v["n"], v["correct"]) for k, v in got["per_class"].items()} == ref["per_class"]
    assert "volcano" not in got["per_class"]  # absent classes do not drag mean per-class accuracy down


@pytest.mark.parametrize("model", MODELS)
def test_most_misclassified_and_confusions_match_reference(preds, result, model):
    ref = reference(preds, model)
    got = result["models"][model]
    wrong = {name: tot - hit for name, (tot, hit) in ref["per_class"].items() if tot > hit}
    listed = got["most_misclassified"]
    assert len(listed) == min(10, len(wrong))
    assert [e["wrong"] for e in listed] == sorted(wrong.values(), reverse=True)[: len(listed)]
    for e in listed:
        assert e["wrong"] == wrong[e["class"]] and e["total"] == ref["per_class"][e["class"]][0]
        assert e["text"] == f"{e['class']}: {e['wrong']}/{e['total']} misclassified"
    pairs = got["confused_pairs"]
    assert [p["count"] for p in pairs] == sorted(ref["pairs"].values(), reverse=True)[: len(pairs)]
    for p in pairs:
        assert ref["pairs"][(p["true"], p["predicted"])] == p["count"]


def test_two_model_comparison_matches_reference(preds, result):
    a, b = MODELS
    (cmp,) = result["comparisons"]
    right = {m: [int(r[top_column(m)][0]) == int(r["target"]) for _, r in preds.iterrows()] for m in MODELS}
    only_a = [p for p, x, y in zip(preds["path"], right[a], right[b]) if x and not y]
    only_b = [p for p, x, y in zip(preds["path"], right[a], right[b]) if y and not x]
    assert cmp["only_right"][a] == {"count": len(only_a), "examples": only_a[:5]}
    assert cmp["only_right"][b] == {"count": len(only_b), "examples": only_b[:5]}
    assert cmp["both_right"] + cmp["both_wrong"] + len(only_a) + len(only_b) == len(preds)
    acc = {m: reference(preds, m)["per_class"] for m in MODELS}
    better_a = {c for c in acc[a] if acc[a][c][1] > acc[b][c][1]}
    better_b = {c for c in acc[a] if acc[b][c][1] > acc[a][c][1]}
    assert cmp["better_classes"][a]["count"] == len(better_a)
    assert cmp["better_classes"][b]["count"] == len(better_b)
    assert {e["class"] for e in cmp["better_classes"][a]["classes"]} <= better_a
    margins = [e["top1"] - e["other_top1"] for e in cmp["better_classes"][a]["classes"]]
    assert margins == sorted(margins, reverse=True) and all(m > 0 for m in margins)


def test_empty_predictions_give_none_not_errors():
    df = make_predictions().iloc[:0]
    out = dataset_metrics(df, NAMES, None)
    assert out["n_images"] == 0
    assert out["models"][MODELS[0]]["top1"] is None and out["models"][MODELS[0]]["most_misclassified"] == []


def test_no_wordnet_distance_without_imagenet_classes(result):
    assert result["models"][MODELS[0]]["mean_wordnet_distance_wrong"] is None


def test_wordnet_distance_of_wrong_predictions(preds):
    from clipcompare.imagenet import wordnet

    imagenet = (0, 1, 2, 978, 21, 985, 980)  # the ImageNet indices behind NAMES
    out = dataset_metrics(preds, NAMES, imagenet)
    for model in MODELS:
        dists = [
            wordnet.class_distance(imagenet[int(r["target"])], imagenet[int(r[top_column(model)][0])])
            for _, r in preds.iterrows() if int(r[top_column(model)][0]) != int(r["target"])
        ]
        assert out["models"][model]["mean_wordnet_distance_wrong"] == pytest.approx(sum(dists) / len(dists))


def test_explicit_distance_matrix_is_used(preds):
    d = np.ones((1000, 1000), dtype=int) * 7
    np.fill_diagonal(d, 0)
    out = dataset_metrics(preds, NAMES, tuple(range(7)), distances=d)
    assert out["models"][MODELS[0]]["mean_wordnet_distance_wrong"] == pytest.approx(7.0)


def test_repeated_class_names_stay_distinct():
    names = ("missile", "tench", "missile")
    df = pd.DataFrame({"path": ["a", "b"], "target": [0, 2],
                       top_column("m"): [np.array([2, 1, 0]), np.array([2, 0, 1])],
                       prob_column("m"): [np.ones(3) / 3, np.ones(3) / 3]})
    out = dataset_metrics(df, names, (657, 0, 744), distances=np.zeros((1000, 1000)))
    per_class = out["models"]["m"]["per_class"]
    assert per_class == {"missile [657]": {"n": 1, "correct": 0, "top1": 0.0},
                         "missile [744]": {"n": 1, "correct": 1, "top1": 1.0}}
    assert out["models"]["m"]["confused_pairs"] == [{"true": "missile [657]", "predicted": "missile [744]", "count": 1}]
