"""Retrieval Recall@K (CLIP_benchmark's definition), the caption-embedding cache, and `clipcompare retrieval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clipcompare.captions import caption_embeddings
from clipcompare.cli import main
from clipcompare.data.coco import load_caption_splits
from clipcompare.retrieval import evaluate, recall_at_k

# texts × images similarities; text t belongs to image OWNER[t]
SCORES = torch.tensor([
    [0.9, 0.1, 0.0],    # own image 0 ranked 1st
    [0.2, 0.5, 0.3],    # own image 0 ranked 3rd
    [0.1, 0.3, 0.8],    # own image 1 ranked 2nd
    [0.4, 0.6, 0.0],    # own image 1 ranked 1st
    [0.7, 0.0, 0.2],    # own image 2 ranked 2nd
    [0.05, 0.15, 0.25],  # own image 2 ranked 1st
])
OWNER = [0, 0, 1, 1, 2, 2]


def clip_benchmark_recalls(scores: torch.Tensor, owner: list[int], ks) -> dict[str, float]:
    """CLIP_benchmark's computation (positive-pair matrix, one-hot top-k), as a reference."""
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(scores)), owner] = True

    def recall(s, p, k):
        top = torch.topk(s, k, dim=1)[1]
        onehot = F.one_hot(top, num_classes=s.shape[1])
        return (onehot * p.view(s.shape[0], 1, s.shape[1])).sum(dim=(1, 2)) / p.sum(dim=1)

    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = (recall(scores, positive, k) > 0).float().mean().item()
        out[f"text_retrieval_recall@{k}"] = (recall(scores.T, positive.T, k) > 0).float().mean().item()
    return out


def test_recall_on_a_hand_made_matrix():
    # identity image embeddings make text_emb @ image_emb.T exactly SCORES
    got = recall_at_k(torch.eye(3), SCORES, OWNER, ks=(1, 2, 3, 10))
    # text→image: hits at rank 1 for texts 0, 3, 5; rank 2 for 2, 4; rank 3 for 1
    assert got["image_retrieval_recall@1"] == pytest.approx(3 / 6)
    assert got["image_retrieval_recall@2"] == pytest.approx(5 / 6)
    assert got["image_retrieval_recall@3"] == 1.0
    # image→text: image 0's best text is t0 (own), image 1's is t3 (own), image 2's own t5 ranks 3rd
    assert got["text_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert got["text_retrieval_recall@2"] == pytest.approx(2 / 3)
    assert got["text_retrieval_recall@3"] == 1.0
    assert got["text_retrieval_recall@10"] == 1.0 and got["image_retrieval_recall@10"] == 1.0  # K clamped
    assert got == pytest.approx(clip_benchmark_recalls(SCORES, OWNER, (1, 2, 3)) | {
        "text_retrieval_recall@10": 1.0, "image_retrieval_recall@10": 1.0})


def test_recall_batched_equals_clip_benchmark_on_random_embeddings():
    g = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(40, 16, generator=g), dim=-1)
    owner = [i for i in range(40) for _ in range(5)]
    texts = F.normalize(images[owner] + 0.9 * torch.randn(200, 16, generator=g), dim=-1)
    ref = clip_benchmark_recalls(texts @ images.T, owner, (1, 5, 10))
    for bs in (7, 1024):
        assert recall_at_k(images, texts, owner, batch_size=bs) == pytest.approx(ref)
    assert 0 < ref["text_retrieval_recall@1"] < 1 and 0 < ref["image_retrieval_recall@1"] < 1


def test_recall_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match=r"text_to_image has \(5,\) entries for 6 texts"):
        recall_at_k(torch.eye(3), SCORES, OWNER[:-1])
    with pytest.raises(ValueError, match="K must be at least 1"):
        recall_at_k(torch.eye(3), SCORES, OWNER, ks=(0,))


CAPTIONS = ["a red circle on the left", "a blue square", "two dogs playing in a very long grassy field on a sunny day",
            "x", "a picture of a triangle that is yellow, near the top edge"] * 3


def test_caption_embeddings_equal_full_forward_and_are_cached(tiny_clip, tmp_path, monkeypatch):
    model, tok = tiny_clip.model, tiny_clip.tokenizer
    emb = caption_embeddings(model, tok, CAPTIONS, model_id="tiny#1", cache_dir=tmp_path, batch_size=4)
    with torch.no_grad():
        ref = F.normalize(model.encode_text(tok(CAPTIONS)).float(), dim=-1)  # full 77-token forward
    assert emb.shape == (15, 64) and emb.dtype == torch.float32
    assert (emb - ref).abs().max().item() <= 1e-5
    files = list((tmp_path / "captions").glob("*.pt"))
    assert len(files) == 1 and torch.equal(torch.load(files[0], weights_only=True), emb)

    def boom(*a, **k):
        raise AssertionError("the second call must read the cache")

    monkeypatch.setattr("clipcompare.captions.encode_prompts", boom)
    assert torch.equal(caption_embeddings(model, tok, CAPTIONS, model_id="tiny#1", cache_dir=tmp_path), emb)
    with pytest.raises(AssertionError, match="the second call must read the cache"):  # another model id
        caption_embeddings(model, tok, CAPTIONS, model_id="tiny#2", cache_dir=tmp_path)  # or other captions: another key
    with pytest.raises(AssertionError, match="the second call must read the cache"):
        caption_embeddings(model, tok, CAPTIONS[:-1], model_id="tiny#1", cache_dir=tmp_path)


def test_a_cached_file_with_another_caption_count_is_rebuilt_and_replaced(tiny_clip, tmp_path):
    from clipcompare.captions import caption_cache_path

    model, tok = tiny_clip.model, tiny_clip.tokenizer
    path = caption_cache_path(tmp_path, "tiny#1", CAPTIONS)
    path.parent.mkdir(parents=True)
    torch.save(torch.zeros(3, 64), path)  # a foreign file under this key
    emb = caption_embeddings(model, tok, CAPTIONS, model_id="tiny#1", cache_dir=tmp_path)
    assert emb.shape == (15, 64) and emb.abs().sum() > 0
    assert torch.equal(torch.load(path, weights_only=True), emb)  # replaced, not rebuilt on every run


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    from clipcompare.data.synthetic import make_coco

    return make_coco(tmp_path_factory.mktemp("coco"), 6, 16, seed=2)


def test_evaluate_equals_a_full_reference_and_skips_corrupt_images(tiny_clip, coco, tmp_path):
    model, tok, pre = tiny_clip.model, tiny_clip.tokenizer, tiny_clip.preprocess
    split = load_caption_splits(coco, val_size=16, which=("val",)).val
    got = evaluate(model, split, tokenizer=tok, preprocess=pre, batch_size=5, caption_cache_dir=tmp_path)
    texts, owner = split.flat_captions()
    from clipcompare.data.decode import load_rgb

    with torch.no_grad():
        img = F.normalize(model.encode_image(torch.stack([pre(load_rgb(split.root / p)) for p in split.paths])), dim=-1)
        txt = F.normalize(model.encode_text(tok(texts)), dim=-1)
    ref = clip_benchmark_recalls(txt @ img.T, owner, (1, 5, 10))
    assert {k: got[k] for k in ref} == pytest.approx(ref, abs=1e-6)
    assert (got["images"], got["captions"], got["skipped"], got["split"]) == (16, 80, 0, "val")
    given = evaluate(model, split, tokenizer=None, preprocess=pre, text_embeddings=txt)  # a trainer's cached texts
    assert {k: given[k] for k in ref} == pytest.approx(ref, abs=1e-6)

    # a corrupt file: that image and its 5 captions leave the evaluation, and it is counted
    import shutil

    root = Path(shutil.copytree(coco, tmp_path / "c"))
    bad = load_caption_splits(root, val_size=16, which=("val",)).val
    (root / bad.paths[3]).write_bytes(b"\xff\xd8 truncated")
    res = evaluate(model, bad, tokenizer=tok, preprocess=pre, batch_size=5, caption_cache_dir=tmp_path)
    assert (res["images"], res["captions"], res["skipped"]) == (15, 75, 1)
    assert res["skipped_examples"] == [bad.paths[3]]
    keep = [i for i in range(16) if i != 3]
    keep_t = [t for t, i in enumerate(owner) if i != 3]
    ref = clip_benchmark_recalls(txt[keep_t] @ img[keep].T, [keep.index(owner[t]) for t in keep_t], (1, 5, 10))
    assert {k: res[k] for k in ref} == pytest.approx(ref, abs=1e-6)


def test_retrieval_cli_end_to_end(coco, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["retrieval", "-m", "clip:tiny-RN-quickgelu", "-m", "clip:tiny-ViT", "--allow-random",
               "--coco", str(coco), "--val-size", "16", "--batch-size", "8", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "i→t R@1" in text and "clip:tiny-RN-quickgelu" in text and "clip:tiny-ViT" in text
    doc = json.loads((out / "retrieval.json").read_text())
    assert doc["split"]["kind"] == "seed" and doc["split"]["splits"]["val"]["got"] == 16
    assert [r["model"] for r in doc["results"]] == ["clip:tiny-RN-quickgelu", "clip:tiny-ViT"]
    for r in doc["results"]:
        assert r["images"] == 16 and r["captions"] == 80 and r["skipped"] == 0 and r["pretrained"] is False
        for k in (1, 5, 10):
            assert 0 <= r[f"text_retrieval_recall@{k}"] <= 1
        assert r["text_retrieval_recall@1"] <= r["text_retrieval_recall@5"] <= r["text_retrieval_recall@10"]

    rc = main(["retrieval", "-m", "clip:tiny-RN-quickgelu", "--allow-random", "--coco", str(coco),
               "--val-size", "16", "--json"])
    printed = json.loads(capsys.readouterr().out)
    keys = [f"{d}_retrieval_recall@{k}" for d in ("text", "image") for k in (1, 5, 10)]
    assert rc == 0 and {k: printed["results"][0][k] for k in keys} == {k: doc["results"][0][k] for k in keys}


def test_retrieval_cli_karpathy_evaluates_test_by_default(coco, tmp_path, capsys):
    from helpers import make_karpathy_file

    file = make_karpathy_file(coco, tmp_path / "dataset_coco.json")
    base = ["retrieval", "-m", "clip:tiny-RN-quickgelu", "--allow-random", "--coco", str(coco),
            "--split", f"karpathy={file}", "--json"]
    assert main(base) == 0
    doc = json.loads(capsys.readouterr().out)
    test_ids = set(load_caption_splits(coco, split=f"karpathy={file}", which=("test",)).test.image_ids)
    assert doc["evaluated_on"] == "test" and len(test_ids) == 5  # val2014 ids 1, 4, 7, 10, 13 of 16
    assert doc["results"][0]["images"] == 5 and doc["results"][0]["split"] == "test"
    assert main([*base, "--on", "val"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["split"] == "val"


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        return int(exc.code)


@pytest.mark.parametrize("args, message", [
    (["-m", "resnet50"], "resnet50:IMAGENET1K_V1 is a supervised classifier"),
    (["--val-size", "99"], "asked for 99 images"),
    (["--split", "karpathy=/no/such.json"], "Karpathy split file not found"),
    (["--split", "bogus"], "expected 'seed' or 'karpathy=FILE'"),
    (["--val-size", "0"], "must be at least 1"),
    (["--captions", "/no/such.csv"], "captions file not found"),
])
def test_retrieval_cli_bad_input_exits_2(coco, capsys, args, message):
    models = [] if "-m" in args else ["-m", "clip:tiny-RN-quickgelu"]
    rc = _exit_code(["retrieval", "--coco", str(coco), "--allow-random", *models, *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
