"""WordNet hierarchy of the ImageNet classes (clipcompare.imagenet.wordnet) and `clipcompare synsets`."""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from clipcompare.cli import main
from clipcompare.errors import UserError
from clipcompare.imagenet import wordnet as W

DATA_NOUN = Path("/usr/share/wordnet/data.noun")
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_wordnet.py"
SPRINGER, GARBAGE_TRUCK = "n02102040", "n03417042"


def _shipped() -> dict:
    blob = resources.files("clipcompare.imagenet").joinpath("data", W.DATA_FILE).read_bytes()
    return json.loads(gzip.decompress(blob))


@pytest.fixture(scope="module")
def random_pairs() -> list[tuple[int, int]]:
    rng = random.Random(0)
    return [(rng.randrange(1000), rng.randrange(1000)) for _ in range(300)]


# --- the data file ------------------------------------------------------------------------------


def test_class_wnids_match_timm_in_order():
    text = resources.files("timm.data").joinpath("_info", "imagenet_synsets.txt").read_text()
    timm_wnids = [line.strip() for line in text.splitlines() if line.strip()]
    assert len(timm_wnids) == 1000
    assert [s.wnid for s in W.class_synsets()] == timm_wnids
    assert _shipped()["classes"] == timm_wnids
    assert [s.index for s in W.class_synsets()] == list(range(1000))


def test_shipped_counts():
    raw = _shipped()
    assert len(raw["synsets"]) == 1860 == len(W.all_synsets())
    assert sum(len(W.hypernym_paths(i)) > 1 for i in range(1000)) == 304
    assert "Princeton" in raw["license"]
    # every parent is itself in the file, and only entity has none
    roots = [w for w, s in raw["synsets"].items() if not s["parents"]]
    assert roots == [W.ROOT]
    assert all(p in raw["synsets"] for s in raw["synsets"].values() for p in s["parents"])


@pytest.mark.skipif(not DATA_NOUN.exists(), reason="WordNet 3.0 not installed (apt-get install wordnet-base)")
def test_generator_reproduces_shipped_file():
    spec = importlib.util.spec_from_file_location("build_wordnet", SCRIPT)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    built = gen.build(DATA_NOUN)
    assert built == _shipped()
    assert json.loads(gzip.decompress(gen.dump(built))) == built


# --- lookups and paths --------------------------------------------------------------------------


def test_every_class_reaches_entity():
    for i in range(1000):
        for path in W.hypernym_paths(i):
            assert path[0].name == "entity.n.01"
            assert path[-1].index == i


def test_springer_paths():
    s = W.synset(SPRINGER)
    assert s.index == 217 and s.lemmas[0] == "English springer"
    names = {x.name for path in W.hypernym_paths(s) for x in path}
    assert {"dog.n.01", "mammal.n.01", "entity.n.01"} <= names
    for path in W.hypernym_paths(s):
        for parent, child in zip(path, path[1:]):
            assert parent.wnid in child.parents


def test_lookup_forms_agree():
    s = W.synset(SPRINGER)
    assert W.synset(217) is s and W.synset("217") is s and W.synset(np.int64(217)) is s
    assert W.synset("english_springer.n.01") is s
    assert W.synset("English Springer Spaniel") is s  # CLIP name
    assert W.synset("english springer") is s  # lemma
    assert W.synset(s) is s
    assert W.synset("dog").name == "dog.n.01"
    assert W.synset("crane bird").wnid == "n02012849"


def test_crane_is_ambiguous():
    assert "crane" in W.synset("n02012849").lemmas and "crane" in W.synset("n03126707").lemmas
    amb = W.ambiguous_names()
    assert amb["crane"] == (134, 517)
    assert amb["cardigan"] == (264, 474)
    assert amb["maillot"] == (638, 639)
    with pytest.raises(UserError, match="ambiguous.*n02012849.*n03126707"):
        W.synset("crane")


@pytest.mark.parametrize("bad, says", [
    ("spanel", "unknown synset or class 'spanel'; closest: spaniel"),
    ("n99999999", "n99999999 is not an ImageNet-1k class or one of their ancestors"),
    ("dgo.n.01", "unknown synset or class 'dgo.n.01'; closest: dingo.n.01, dog.n.01"),
    (1000, "class index 1000 is out of range 0-999"),
    (-1, "class index -1 is out of range 0-999"),
])
def test_unknown_raises_user_error(bad, says):
    with pytest.raises(UserError, match=re.escape(says)):
        W.synset(bad)


def test_unknown_suggests_closest():
    with pytest.raises(UserError, match="closest: .*spaniel"):
        W.synset("spanel")


def test_classes_under_dog():
    under = W.classes_under("dog.n.01")
    assert under == list(range(151, 269)) and len(under) == 118
    assert W.class_count("dog.n.01") == 118
    assert W.classes_under(SPRINGER) == [217]
    assert len(W.classes_under("entity.n.01")) == 1000


# --- distances ----------------------------------------------------------------------------------


def test_distance_basics():
    assert W.tree_distance(SPRINGER, SPRINGER) == 0
    assert W.lowest_common_ancestor(SPRINGER, SPRINGER).wnid == SPRINGER
    assert W.tree_distance(SPRINGER, "dog.n.01") == 5  # hunting dog, sporting dog, spaniel, springer spaniel
    assert W.lowest_common_ancestor(SPRINGER, "dog.n.01").name == "dog.n.01"
    assert W.lowest_common_ancestor(0, 1).name == "cyprinid.n.01" and W.tree_distance(0, 1) == 2


def test_distance_properties(random_pairs):
    for a, b in random_pairs:
        d = W.tree_distance(a, b)
        assert d == W.tree_distance(b, a)
        lca = W.lowest_common_ancestor(a, b)
        assert lca == W.lowest_common_ancestor(b, a)
        assert W.tree_distance(a, lca) + W.tree_distance(lca, b) == d
        assert (d == 0) == (a == b)


def test_class_distance_matches_tree_distance(random_pairs):
    m = W.class_distance_matrix()
    assert m.shape == (1000, 1000) and not m.flags.writeable
    assert (np.diag(m) == 0).all() and (m == m.T).all()
    for a, b in random_pairs:
        assert W.class_distance(a, b) == W.tree_distance(a, b) == m[a, b]
    with pytest.raises(IndexError, match="class indices must be in 0-999, got 0, 1000"):
        W.class_distance(0, 1000)


def test_subtree_depth():
    tree = W.subtree("animal.n.01", 1)
    assert tree["name"] == "animal.n.01" and tree["classes"] == len(W.classes_under("animal.n.01"))
    assert tree["children"] and all(c["children"] == [] for c in tree["children"])


# --- CLI ----------------------------------------------------------------------------------------


def _cli(capsys, *argv: str) -> str:
    assert main(["synsets", *argv]) == 0
    return capsys.readouterr().out


def test_cli_show(capsys):
    out = _cli(capsys, SPRINGER)
    assert "English springer" in out and "black-and-white coat" in out
    assert "entity > physical entity" in out and " > dog > " in out
    data = json.loads(_cli(capsys, "217", "--json"))
    assert data["wnid"] == SPRINGER and len(data["paths"]) == 2
    assert data["paths"][0][0]["name"] == "entity.n.01" and data["paths"][0][-1]["wnid"] == SPRINGER


def test_cli_under(capsys):
    out = _cli(capsys, "--under", "dog.n.01")
    assert "118 classes" in out and "Chihuahua" in out
    data = json.loads(_cli(capsys, "--under", "dog.n.01", "--json"))
    assert data["count"] == 118 and [c["index"] for c in data["classes"]] == list(range(151, 269))


def test_cli_tree(capsys):
    out = _cli(capsys, "--tree", "animal.n.01", "--depth", "3")
    lines = out.splitlines()
    assert lines[0].startswith("animal.n.01 (")
    assert any(line.startswith("    dog.n.01 (118)") for line in lines)
    assert max(len(line) - len(line.lstrip()) for line in lines) == 6  # 3 levels, 2 spaces each
    data = json.loads(_cli(capsys, "--tree", "dog.n.01", "--depth", "1", "--json"))
    assert data["classes"] == 118 and sum(c["classes"] for c in data["children"]) >= 118


def test_cli_ambiguous(capsys):
    out = _cli(capsys, "--ambiguous")
    assert "crane:" in out and "cardigan:" in out and "maillot:" in out
    data = json.loads(_cli(capsys, "--ambiguous", "--json"))
    crane = next(d for d in data if d["name"] == "crane")
    assert [c["wnid"] for c in crane["classes"]] == ["n02012849", "n03126707"]
    assert all(c["gloss"] for c in crane["classes"])


def test_cli_distance(capsys):
    out = _cli(capsys, "--distance", SPRINGER, GARBAGE_TRUCK)
    d = W.tree_distance(SPRINGER, GARBAGE_TRUCK)
    assert f"distance: {d}" in out and "common ancestor:" in out
    data = json.loads(_cli(capsys, "--distance", SPRINGER, GARBAGE_TRUCK, "--json"))
    assert data["distance"] == d == data["a_to_ancestor"] + data["b_to_ancestor"]
    assert data["common_ancestor"]["wnid"] == W.lowest_common_ancestor(SPRINGER, GARBAGE_TRUCK).wnid


@pytest.mark.parametrize("argv", [["spanel"], ["--under", "crane"], ["--distance", SPRINGER, "n99999999"]])
def test_cli_unknown_is_one_line_exit_2(capsys, argv):
    assert main(["synsets", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clipcompare: error:") and "\n" not in err


def test_cli_needs_a_mode(capsys):
    with pytest.raises(SystemExit, match="^2$") as exc:
        main(["synsets"])
    assert exc.value.code == 2
