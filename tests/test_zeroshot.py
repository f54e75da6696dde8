"""Zero-shot heads: equal to open_clip's reference, cached on disk, scaled by the model's logit scale."""

from __future__ import annotations

import json
import re

import numpy as np
import open_clip
import pytest
import torch

from clipcompare.classes import ClassSet
from clipcompare.cli import main
from clipcompare.errors import UserError
from clipcompare.models.classifier import ClipClassifier
from clipcompare.models.loading import load_model
from clipcompare.models.spec import parse_spec
from clipcompare.zeroshot import build_head, cached_head, head_cache_key, load_templates, render_prompts

NAMES = ["bald eagle", "axolotl", "common iguana", "French bulldog", "a very long class name with many words in it"]


@pytest.mark.parametrize("arch", ["tiny-RN-quickgelu", "tiny-ViT"])
@pytest.mark.parametrize("templates", ["single", "openai"])
def test_trimmed_head_equals_open_clip(arch, templates):
    torch.manual_seed(0)
    loaded = load_model(parse_spec(f"clip:{arch}"), allow_random=True)
    temps = load_templates(templates)
    ours = build_head(loaded.model, loaded.tokenizer, NAMES, temps, batch_size=64)
    with torch.no_grad():
        ref = open_clip.build_zero_shot_classifier(loaded.model, loaded.tokenizer, NAMES, temps)
    assert ours.shape == ref.shape == (64, len(NAMES))
    assert (ours - ref).abs().max().item() <= 1e-5


def test_untrimmed_path_matches_too(tiny_clip):
    temps = load_templates("single")
    a = build_head(tiny_clip.model, tiny_clip.tokenizer, NAMES, temps, trim=False)
    b = build_head(tiny_clip.model, tiny_clip.tokenizer, NAMES, temps, trim=True)
    assert (a - b).abs().max().item() <= 1e-5


def test_templates(tmp_path):
    assert load_templates("single") == ["a photo of a {}."]
    assert len(load_templates("openai")) == 80
    f = tmp_path / "t.txt"
    f.write_text("# comment\na sketch of a {}.\n\nart of the {}.\n")
    assert load_templates(str(f)) == ["a sketch of a {}.", "art of the {}."]
    f.write_text("no placeholder\n")
    with pytest.raises(UserError, match=r"t\.txt:1: a template needs exactly one '\{\}' .*, not 'no placeholder'$"):
        load_templates(str(f))
    with pytest.raises(UserError, match="--templates: expected 'single', 'openai', 'dataset' or a file, got 'nosuchset'"):
        load_templates("nosuchset")



def test_template_file_with_other_braces_is_refused_at_load_naming_the_line(tmp_path, image_folder, capsys):
    """Templates are ``str.format`` with one ``{}`` (open_clip's): other fields are one line, not a KeyError."""
    f = tmp_path / "t.txt"
    f.write_text("# mine\na photo of a {}.\n\na {0} {name} photo of {}.\n")
    expected = f"{f}:4: a template needs exactly one '{{}}' (the class name) and no other braces ('{{{{' and '}}}}' " \
               "for literal ones), not 'a {0} {name} photo of {}.'"
    with pytest.raises(UserError, match=f"^{re.escape(expected)}$"):
        load_templates(str(f))
    for bad in ("a {} in {}", "a {0}", "a {:>9}", "a {!r}", "an {unclosed {}", "a {} }"):
        f.write_text(f"{bad}\n")
        with pytest.raises(UserError, match=f"^{re.escape(str(f))}:1: a template needs exactly one"):
            load_templates(str(f))
    f.write_text("a {{logo}} of {}\n")  # doubled braces are literal, as in str.format
    assert render_prompts(["dog"], load_templates(str(f))) == ["a {logo} of dog"]
    # the user's path: one line and exit 2 from the command
    f.write_text("a {0} {name} photo of {}.\n")
    img = next(image_folder.rglob("*.JPEG"))
    assert main(["classify", str(img), "--labels", "dog,cat", "-m", "clip:tiny-RN-quickgelu", "--allow-random",
                 "--templates", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"clipcompare: error: {f}:1: a template needs") and err.count("\n") == 1


def test_head_cache_roundtrip(tmp_path, tiny_clip, monkeypatch):
    temps = load_templates("single")
    first = cached_head(tiny_clip.model, tiny_clip.tokenizer, NAMES, temps, model_id="m#1", cache_dir=tmp_path)
    assert len(list((tmp_path / "heads").glob("*.pt"))) == 1

    def boom(*a, **k):
        raise AssertionError("the second run must load the cache")

    monkeypatch.setattr("clipcompare.zeroshot.build_head", boom)
    second = cached_head(tiny_clip.model, tiny_clip.tokenizer, NAMES, temps, model_id="m#1", cache_dir=tmp_path)
    assert torch.equal(first, second)


def test_cache_key_depends_on_model_templates_and_classes():
    single, openai = load_templates("single"), load_templates("openai")
    keys = {
        head_cache_key("m#1", NAMES, single),
        head_cache_key("m#2", NAMES, single),
        head_cache_key("m#1", NAMES, openai),
        head_cache_key("m#1", NAMES[:2], single),
    }
    assert len(keys) == 4
    assert head_cache_key("m#1", NAMES, openai) == head_cache_key("m#1", NAMES, load_templates("openai"))


def test_clip_logits_use_the_models_logit_scale(tiny_clip):
    clf = ClipClassifier(tiny_clip, templates="single")
    torch.manual_seed(3)
    x = torch.randn(2, 3, 64, 64)
    classes = ClassSet(tuple(NAMES))
    with torch.no_grad():
        img = tiny_clip.model.encode_image(x)
        img = img / img.norm(dim=-1, keepdim=True)
        expected = tiny_clip.model.logit_scale.exp() * img @ clf.head(classes)
        assert torch.allclose(clf.logits(x, classes), expected, atol=1e-5)
        assert torch.allclose(clf.cosine(x, classes) * tiny_clip.model.logit_scale.exp(), expected, atol=1e-5)


def test_weights_change_the_model_id(tiny_clip):
    a = ClipClassifier(tiny_clip, templates="single").model_id
    torch.manual_seed(123)
    other = load_model(parse_spec("clip:tiny-RN-quickgelu"), allow_random=True)
    assert ClipClassifier(other, templates="single").model_id != a



def test_model_identity_tells_activations_apart(tiny_clip):
    """Equal weights built with GELU instead of QuickGELU must not share cached heads or caption embeddings."""
    import copy

    from open_clip.transformer import QuickGELU

    from clipcompare.models.hashing import model_identity

    same = copy.deepcopy(tiny_clip.model)
    gelu = copy.deepcopy(tiny_clip.model)
    swapped = 0
    for parent in gelu.modules():
        for name, child in parent.named_children():
            if isinstance(child, QuickGELU):
                setattr(parent, name, torch.nn.GELU())
                swapped += 1
    assert swapped > 0
    ident = model_identity("m", tiny_clip.model)
    assert model_identity("m", same) == ident and "QuickGELU" in ident
    assert model_identity("m", gelu) != ident
    assert model_identity("other", same) != ident


# ------------------------------------------------------------------ classify CLI


def _classify_json(capsys, *args):
    assert main(["classify", *args, "--json", "--allow-random", "--templates", "single"]) == 0
    return json.loads(capsys.readouterr().out)


def test_classify_imagenet_labels_both_models(image_folder, capsys):
    img = next(image_folder.rglob("*.JPEG"))
    out = _classify_json(capsys, str(img), "--labels", "bald eagle,leopard,axolotl", "--top", "2",
                         "-m", "resnet18", "-m", "clip:tiny-RN-quickgelu")
    preds = out["results"][0]["predictions"]
    assert set(preds) == {"resnet18:IMAGENET1K_V1", "clip:tiny-RN-quickgelu"}
    for p in preds.values():
        assert len(p) == 2 and p[0]["prob"] >= p[1]["prob"]
        assert {x["imagenet_index"] for x in p} <= {22, 288, 29}


def test_classify_free_labels_skip_the_supervised_model(image_folder, capsys):
    img = next(image_folder.rglob("*.JPEG"))
    out = _classify_json(capsys, str(img), "--labels", "a red thing,a blue thing",
                         "-m", "resnet18", "-m", "clip:tiny-RN-quickgelu")
    assert list(out["results"][0]["predictions"]) == ["clip:tiny-RN-quickgelu"]
    assert any("skipped resnet18" in n for n in out["notes"])


def test_raw_cosine_is_a_plain_softmax_of_cosines(image_folder, capsys):
    img = sorted(image_folder.rglob("*.JPEG"))[0]
    args = [str(img), "--labels", ",".join(NAMES), "--top", "5", "-m", "clip:tiny-RN-quickgelu"]
    raw = _classify_json(capsys, *args, "--raw-cosine")["results"][0]["predictions"]["clip:tiny-RN-quickgelu"]
    scaled = _classify_json(capsys, *args)["results"][0]["predictions"]["clip:tiny-RN-quickgelu"]

    # by hand, with open_clip's own head: the same seeded random model, its image embedding, the cosines
    from PIL import Image

    from clipcompare.models.loading import seeded_init

    with seeded_init():  # the CLI's random init
        loaded = load_model(parse_spec("clip:tiny-RN-quickgelu"), allow_random=True)
    with torch.no_grad(), Image.open(img) as im:
        emb = loaded.model.encode_image(loaded.preprocess(im.convert("RGB")).unsqueeze(0))
        head = open_clip.build_zero_shot_classifier(loaded.model, loaded.tokenizer, NAMES, ["a photo of a {}."])
    cos = ((emb / emb.norm(dim=-1, keepdim=True)) @ head)[0].double().numpy()
    scale = loaded.model.logit_scale.exp().item()
    assert scale == pytest.approx(1 / 0.07)  # open_clip's initial temperature: the two runs must differ
    for got, logits in ((raw, cos), (scaled, scale * cos)):
        want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert [p["label"] for p in got] == [NAMES[i] for i in np.argsort(-want)]
        assert [p["prob"] for p in got] == pytest.approx(np.sort(want)[::-1].tolist(), abs=1e-6)


def test_classify_a_folder_is_its_image_files_in_batches(image_folder, tmp_path, capsys, monkeypatch):
    """A folder stands for the image files directly in it (sorted); forwards in chunks give the same numbers."""
    import clipcompare.classify as cl

    folder = sorted(p.parent for p in image_folder.rglob("*.JPEG"))[0]
    files = sorted(folder.glob("*.JPEG"))
    (folder / "notes.txt").write_text("not an image")  # not an image extension: left out
    args = ["--labels", ",".join(NAMES), "--top", str(len(NAMES)), "-m", "clip:tiny-RN-quickgelu"]
    listed = _classify_json(capsys, *map(str, files), *args)
    monkeypatch.setattr(cl, "BATCH", 1)
    whole = _classify_json(capsys, str(folder), *args)
    assert [r["path"] for r in whole["results"]] == [str(f) for f in files] and len(files) > 1
    for a, b in zip(listed["results"], whole["results"]):
        # every label's probability (random weights make near-ties, whose order a batch size may flip)
        x, y = ({p["label"]: p["prob"] for p in r["predictions"]["clip:tiny-RN-quickgelu"]} for r in (a, b))
        assert x.keys() == y.keys() and all(x[k] == pytest.approx(y[k], abs=1e-6) for k in x)
    (tmp_path / "empty").mkdir()
    assert main(["classify", str(tmp_path / "empty"), "--allow-random"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no image files" in err[0]


def test_classify_bad_image_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    assert main(["classify", str(bad), "--allow-random"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.jpg" in err[0]
    assert main(["classify", str(tmp_path / "missing.jpg")]) == 2



def test_classify_a_folder_skips_and_counts_unreadable_images(tmp_path, capsys):
    """As evaluate does: the readable images are classified, the others listed with their reasons."""
    from helpers import make_image

    folder = tmp_path / "photos"
    for k in range(3):
        make_image(folder / f"ok{k}.jpg", size=(40, 32), seed=k)
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "torn.jpg").write_bytes((folder / "ok0.jpg").read_bytes()[:40])
    base = [str(folder), "--labels", "dog,cat", "-m", "clip:tiny-RN-quickgelu", "--top", "1"]
    out = _classify_json(capsys, *base)
    assert [r["path"] for r in out["results"]] == [str(folder / f"ok{k}.jpg") for k in range(3)]
    assert [s["path"] for s in out["skipped"]] == [str(folder / "broken.jpg"), str(folder / "torn.jpg")]
    assert all(s["reason"].split(":")[0] in ("UnidentifiedImageError", "OSError") for s in out["skipped"])
    assert "skipped 2 unreadable images" in out["notes"][-1]
    assert main(["classify", *base, "--allow-random", "--templates", "single"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[-1].startswith(f"note: skipped 2 unreadable images (first: {folder / 'broken.jpg'}: ")
    assert sum(line == str(folder / f"ok{k}.jpg") for line in text for k in range(3)) == 3
    for k in range(3):  # nothing readable left: one line
        (folder / f"ok{k}.jpg").unlink()
    assert main(["classify", *base, "--allow-random"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("clipcompare: error: no readable image among 2 files (first: ")


def test_cli_usage_errors_are_one_line(capsys):
    for argv in (["nosuchcommand"], ["classify"], ["classify", "x.jpg", "--top", "many"]):
        with pytest.raises(SystemExit, match="^2$") as exc:
            main(argv)
        assert exc.value.code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
