"""``hf:ORG/REPO`` and ``hf:PATH``: transformers CLIPModel / SiglipModel through clipcompare.

Tiny random CLIP and SigLIP models are written with ``save_pretrained`` beside a real processor (a
CLIPTokenizer from a vocabulary written here, a tokenizers WordLevel tokenizer for SigLIP, the repos'
image processors), as a folder and as a Hugging Face cache entry; clipcompare's numbers must equal
transformers' own ``model(**processor(text=..., images=..., padding="max_length"))``.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from PIL import Image

from clipcompare.classes import ClassSet
from clipcompare.cli import main
from clipcompare.errors import MissingWeightsError, UserError
from clipcompare.models.classifier import create_classifier
from clipcompare.models.loading import load_model
from clipcompare.models.spec import parse_spec
from helpers import fake_hf_cache, make_image

transformers = pytest.importorskip("transformers")

REPO = "someorg/tiny-hf-clip"
LABELS = ["cat", "dog", "photo of the cat"]
WORDS = ["<pad>", "</s>", "<unk>", "a", "photo", "of", "the", "cat", "dog", ".", "red", "blue", "square", "circle",
         "triangle", "green", "on", "white", "background", "and", "with", "small", "large", "image"]


def _clip_tokenizer():
    """A real CLIPTokenizer (byte-level BPE, </w> word ends) over every byte and a few merges."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = [("a", "t</w>"), ("c", "at</w>"), ("o", "f</w>"), ("p", "h"), ("ph", "o"), ("d", "o"), ("do", "g</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77), vocab


def write_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A CLIPModel (32 px ViT, 77-token text) + CLIPProcessor (shorter side 40, centre crop 32)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok, vocab = _clip_tokenizer()
    eos = vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(seed)
    model = CLIPModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(20.0))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 40},
                                                                 crop_size={"height": 32, "width": 32}), tokenizer=tok)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_tiny_siglip(folder: Path, seed: int = 0, mask: bool = False) -> Path:
    """A SiglipModel (sigmoid head: scale 10, bias -2.5) + SiglipProcessor (squash to 32, 64 tokens). The
    tokenizer returns input_ids only, as SigLIP's own does (``mask``: an attention mask too)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast, SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    tk = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="</s>", eos_token="</s>", unk_token="<unk>",
                                  model_max_length=64,
                                  model_input_names=["input_ids", "attention_mask"] if mask else ["input_ids"])
    config = SiglipConfig(
        text_config=dict(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, bos_token_id=None, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8))
    torch.manual_seed(seed)
    model = SiglipModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-2.5)
    processor = SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


WRITERS = {"clip": write_tiny_clip, "siglip": write_tiny_siglip,
           "siglip-mask": lambda folder: write_tiny_siglip(folder, mask=True)}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, with huggingface_hub told it is *online*: only the loader keeps it off."""
    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return hub


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hfmodels")
    for kind, write in WRITERS.items():
        write(root / kind)
    return root


def _images(tmp_path: Path) -> list[Image.Image]:
    sizes = [(70, 50), (50, 71), (96, 72)]  # landscape, portrait (odd crop offsets), another size
    return [Image.open(make_image(tmp_path / f"im{i}.jpg", size, seed=i)).convert("RGB") for i, size in enumerate(sizes)]


def _reference_logits(folder: Path, texts: list[str], images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' own: model(**processor(text, images, padding="max_length")).logits_per_image, pixel_values."""
    from transformers import AutoModel, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    inputs = processor(text=texts, images=images, padding="max_length", return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits_per_image, inputs["pixel_values"]


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("kind", list(WRITERS))
@pytest.mark.parametrize("where", ["folder", "cache"])
def test_zero_shot_logits_equal_transformers_own(kind, where, models_dir, tmp_path, hf_cache):
    folder = models_dir / kind
    spec = f"hf:{folder}"
    if where == "cache":
        fake_hf_cache(hf_cache, REPO, _files(folder))
        spec = f"hf:{REPO}"
    images = _images(tmp_path)
    clf = create_classifier(spec, templates="single")
    assert clf.pretrained and clf.name == (f"hf:{kind}" if where == "folder" else f"hf:{REPO}")
    ref, pixels = _reference_logits(folder, [f"a photo of a {c}." for c in LABELS], images)
    x = torch.stack([clf.preprocess(im) for im in images])
    assert torch.equal(x, pixels)  # the repo's own processor, bit for bit
    with torch.no_grad():
        got = clf.logits(x, ClassSet.from_labels(LABELS))
    assert (got - ref).abs().max() <= 1e-5
    assert ref.std() > 0.01  # the logits differ between labels and images: a real comparison
    from clipcompare.zeroshot import _text_tower

    assert _text_tower(clf.model) is None  # prompts take the plain encode_text path, no open_clip EOT trimming
    build = clf.loaded.build
    if kind == "clip":
        assert (build.resize, build.crop, build.resize_mode, build.interpolation) == (40, 32, "shortest",
                                                                                    "bicubic (torchvision backend)")
        assert build.tokenizer.startswith("CLIPTokenizer, padding max_length to 77 tokens")
        assert "exp = 20" in build.logit_scale and clf.logit_bias is None
    else:
        assert (build.resize, build.crop, build.resize_mode) == ([32, 32], [32, 32], "squash")
        assert "padding max_length to 64 tokens" in build.tokenizer
        assert "bias -2.5 (sigmoid head)" in build.logit_scale and clf.sigmoid_head
        assert clf.model(image=x, text=clf.tokenizer(["a cat"]))[3].item() == pytest.approx(-2.5)


def test_retrieval_recall_equals_clip_benchmark_on_transformers_scores(models_dir, tmp_path):
    from clip_benchmark.metrics.zeroshot_retrieval import recall_at_k
    from transformers import AutoModel, AutoProcessor

    from clipcompare.data.coco import load_caption_splits
    from clipcompare.data.decode import load_rgb
    from clipcompare.data.synthetic import make_coco
    from clipcompare.retrieval import evaluate

    coco = make_coco(tmp_path / "coco", 6, 16, seed=2)
    split = load_caption_splits(coco, val_size=16, which=("val",)).val
    texts, owner = split.flat_captions()
    for kind in ("clip", "siglip"):
        folder = models_dir / kind
        loaded = load_model(parse_spec(f"hf:{folder}"))
        got = evaluate(loaded.model, split, tokenizer=loaded.tokenizer, preprocess=loaded.preprocess, batch_size=5,
                       caption_cache_dir=tmp_path / "cache", ks=(1, 5, 10))
        processor = AutoProcessor.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder).eval()
        with torch.no_grad():
            inputs = processor(text=texts, images=[load_rgb(split.root / p) for p in split.paths],
                               padding="max_length", return_tensors="pt")
            out = model(**inputs)
        scores = out.logits_per_text  # texts × images; any monotone map of the cosine ranks the same
        positive = torch.zeros_like(scores, dtype=torch.bool)
        positive[torch.arange(len(texts)), owner] = True
        for k in (1, 5, 10):
            assert got[f"image_retrieval_recall@{k}"] == pytest.approx(
                (recall_at_k(scores, positive, k) > 0).float().mean().item(), abs=1e-6)
            assert got[f"text_retrieval_recall@{k}"] == pytest.approx(
                (recall_at_k(scores.T, positive.T, k) > 0).float().mean().item(), abs=1e-6)
        assert 0 < got["text_retrieval_recall@5"] < 1 or 0 < got["image_retrieval_recall@5"] < 1


# --------------------------------------------------------------------------- offline, the cache


def test_a_fake_cache_is_read_with_no_network_attempt(models_dir, hf_cache):
    """huggingface_hub is told it is online (HF_HUB_OFFLINE unset): the sealed suite's net guard fails
    this test if loading so much as resolves a host."""
    snapshot = fake_hf_cache(hf_cache, REPO, _files(models_dir / "clip"))
    loaded = load_model(parse_spec(f"hf:{REPO}"))
    assert loaded.pretrained and Path(loaded.weights_file).parent == snapshot
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # restored after the load
    with pytest.raises(MissingWeightsError, match="not in the Hugging Face cache.*hf download someorg/other"):
        load_model(parse_spec("hf:someorg/other"))


def test_a_fresh_process_with_downloads_allowed_stays_offline(models_dir, hf_cache):
    """The CLI in a new interpreter, HF_HUB_OFFLINE and CLIPCOMPARE_OFFLINE unset (transformers and
    huggingface_hub read them at import): the net guard, inherited by the child, logs any attempt and the
    sealed suite fails this test; a repo not in the cache is one line, at once."""
    import os
    import subprocess

    fake_hf_cache(hf_cache, REPO, _files(models_dir / "siglip"))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "CLIPCOMPARE_OFFLINE")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1] / "src"), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-m", "clipcompare", "inspect", "-m", f"hf:{REPO}", "--json"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    (m,) = json.loads(run.stdout)["models"]
    assert m["weights"] == "pretrained (model.safetensors)" and m["name"] == f"hf:{REPO}"
    run = subprocess.run([sys.executable, "-m", "clipcompare", "inspect", "-m", "hf:someorg/absent"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "is not in the Hugging Face cache" in run.stderr


def test_spec_rule_an_existing_folder_wins(models_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_spec(f"hf:{REPO}").arch == REPO  # no such folder: a repo id
    (tmp_path / "someorg").mkdir()
    shutil.copytree(models_dir / "clip", tmp_path / REPO)
    spec = parse_spec(f"hf:{REPO}")  # now a folder of that spelling exists: the folder
    assert spec.arch == str(tmp_path / REPO) and spec.name == "hf:tiny-hf-clip"
    assert load_model(spec).pretrained
    with pytest.raises(UserError, match="folder not found"):
        parse_spec("hf:./nothing/here")


# --------------------------------------------------------------------------- the commands


def test_inspect_counts_every_parameter_exactly(models_dir, capsys):
    from transformers import AutoModel

    for kind in ("clip", "siglip"):
        assert main(["inspect", "-m", f"hf:{models_dir / kind}", "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        (m,) = doc["models"]
        ref = AutoModel.from_pretrained(models_dir / kind)
        image = sum(p.numel() for p in ref.vision_model.parameters()) + sum(
            p.numel() for p in getattr(ref, "visual_projection", torch.nn.Identity()).parameters())
        assert (m["params_total"], m["params_image"]) == (sum(p.numel() for p in ref.parameters()), image)
        assert m["params_text"] == m["params_total"] - image and m["image_size"] == 32
        assert m["build"]["architecture"] == f"transformers {type(ref).__name__}"


def test_classify_shows_siglip_sigmoid_and_clip_softmax(models_dir, tmp_path, capsys):
    images = _images(tmp_path)
    path = tmp_path / "im0.jpg"
    args = ["classify", str(path), "--labels", ",".join(LABELS), "--templates", "single", "--json"]
    assert main([*args, "-m", f"hf:{models_dir / 'siglip'}", "-m", f"hf:{models_dir / 'clip'}"]) == 0
    doc = json.loads(capsys.readouterr().out)
    preds = doc["results"][0]["predictions"]
    texts = [f"a photo of a {c}." for c in LABELS]
    for kind, prob in (("siglip", torch.sigmoid), ("clip", lambda x: x.softmax(-1))):
        ref = prob(_reference_logits(models_dir / kind, texts, images[:1])[0][0])
        got = {p["label"]: p["prob"] for p in preds[f"hf:{kind}"]}
        assert got == pytest.approx({c: ref[i].item() for i, c in enumerate(LABELS)}, abs=1e-5)
    assert any("hf:siglip: sigmoid probabilities" in n for n in doc["notes"])


def test_evaluate_and_precision_run_and_record_the_processor(models_dir, image_folder, tmp_path, capsys,
                                                             monkeypatch):
    out = tmp_path / "run"
    spec = f"hf:{models_dir / 'siglip'}"
    assert main(["evaluate", "-d", f"folder={image_folder}", "-m", spec, "-m", "resnet18", "--allow-random",
                 "--templates", "single", "--out", str(out)]) == 0
    # explain --run reloads the folder by run.json's spec, from another working directory
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["explain", "--run", str(out), "--allow-random", "--json"]) == 0, capsys.readouterr().err
    explained = json.loads((out / "explain" / "folder" / "explain.json").read_text())
    assert explained["images"] and all("hf:siglip" in im["models"] for im in explained["images"])
    run = json.loads((out / "run.json").read_text())
    m = run["models"][0]
    # the display name is the column; the spec loads the same folder again, from any working directory
    assert (m["name"], m["spec"]) == ("hf:siglip", f"hf:{(models_dir / 'siglip').resolve()}")
    assert parse_spec(m["spec"]) == parse_spec(spec)
    assert m["build"]["tokenizer"].startswith("TokenizersBackend, padding max_length to 64 tokens")
    assert m["build"]["preprocess_source"].startswith("SiglipImageProcessor")
    capsys.readouterr()
    rc = main(["precision", "-m", f"hf:{models_dir / 'clip'}", "--dtypes", "fp32,bf16", "--batch-sizes", "1",
               "--warmup", "0", "--min-runs", "3", "--min-time", "0.001", "--images", str(image_folder / "n01440764"),
               "--labels", "tench,goldfish", "--json"])
    assert rc == 0
    (model,) = json.loads(capsys.readouterr().out)["models"]
    assert model["build"]["architecture"] == "transformers CLIPModel" and model["build"]["crop"] == 32


def test_decode_paths_run_the_processor_itself(models_dir, image_folder, tmp_path):
    """The repo's processor resizes uint8 tensors, which evaluate's split PIL path cannot reproduce: with
    --decode cpu it runs whole per image; with --decode gpu the same processor runs on the decoded tensors,
    equal to its PIL result bit for bit (only the JPEG decoder can differ), and evaluate's top-5 agree."""
    import numpy as np
    import pandas as pd

    from clipcompare.data.tensor_preprocess import split_preprocess, tensor_preprocess
    from clipcompare.evaluation import EvaluateOptions, evaluate
    from clipcompare.evaluation.metrics import prob_column, top_column

    for kind in ("clip", "siglip"):
        clf = create_classifier(f"hf:{models_dir / kind}", templates="single")
        assert split_preprocess(clf.preprocess) is None
        images = _images(tmp_path)
        tensors = [torch.from_numpy(np.array(im)).permute(2, 0, 1).contiguous() for im in images]
        assert torch.equal(tensor_preprocess(clf.preprocess)(tensors), torch.stack([clf.preprocess(im) for im in images]))
    spec = f"hf:{models_dir / 'clip'}"
    for path in ("cpu", "gpu"):
        evaluate([spec], [f"imagenet={image_folder}"], EvaluateOptions(
            out=tmp_path / path, workers=0, templates="single", progress=False, device="cpu", batch_size=4, decode=path))
    a, b = (pd.read_parquet(tmp_path / p / "predictions" / "imagenet.parquet") for p in ("cpu", "gpu"))
    assert list(a["path"]) == list(b["path"]) and len(a) == 12
    assert (np.stack(a[top_column("hf:clip")]) == np.stack(b[top_column("hf:clip")])).all()
    np.testing.assert_allclose(np.stack(a[prob_column("hf:clip")]), np.stack(b[prob_column("hf:clip")]), atol=1e-4)
    run = json.loads((tmp_path / "gpu" / "run.json").read_text())
    assert run["options"]["tensor_preprocess"]["hf:clip"]["processor"] == "CLIPImageProcessor"


def test_train_with_an_hf_text_model(models_dir, tmp_path, capsys):
    from clipcompare.data.synthetic import make_coco
    from clipcompare.models.contrastive import load_trained

    coco = make_coco(tmp_path / "coco", 20, 10, seed=0)
    out = tmp_path / "train"
    assert main(["train", "--coco", str(coco), "--train-size", "20", "--val-size", "10", "--epochs", "1",
                 "--batch-size", "10", "--image-model", "resnet18", "--text-model", f"hf:{models_dir / 'clip'}",
                 "--image-size", "32", "--allow-random", "--workers", "0", "--out", str(out)]) == 0
    capsys.readouterr()
    ckpt = out / "checkpoints" / "last.pt"
    if not ckpt.exists():
        ckpt = sorted((out / "checkpoints").glob("*.pt"))[0]
    model = load_trained(ckpt)
    assert model.architecture.text_model == f"hf:{models_dir / 'clip'}" and model.architecture.embed_dim == 16
    # the frozen text tower is the transformers one: its weights are the folder's
    from transformers import CLIPModel

    ref = CLIPModel.from_pretrained(models_dir / "clip")
    assert torch.equal(model.text.projection.weight, ref.text_projection.weight)
    tok = model.tokenizer
    with torch.no_grad():
        got = model.encode_text(tok(["a cat"]))
        want = ref.get_text_features(**tok.tokenizer(["a cat"], padding="max_length", return_tensors="pt")).pooler_output
    assert (got - want).abs().max() <= 1e-5


# --------------------------------------------------------------------------- bad input


def _bert_folder(folder: Path) -> Path:
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=8)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("case, says", [
    ("bert", "is a transformers 'bert' model (BertModel); hf: loads CLIPModel and SiglipModel only"),
    ("no-config", "has no config.json: not a transformers save_pretrained folder"),
    ("open-clip", "holds open_clip_config.json: an open_clip model, load it as clip:local-dir:"),
    ("not-cached", "is not in the Hugging Face cache"),
    ("no-folder", "folder not found"),
    ("no-processor", "cannot load the processor"),
    ("no-weights", "weights for hf:noweights not found"),
    ("with-file", "takes no @TAG or =FILE"),
    ("folder-with-file", "hf:PATH takes no @TAG or =FILE"),
])
def test_bad_input_is_one_line_exit_2(case, says, models_dir, tmp_path, hf_cache, capsys):
    if case == "bert":
        spec = f"hf:{_bert_folder(tmp_path / 'bert')}"
    elif case in ("no-config", "open-clip"):
        (tmp_path / "empty").mkdir()
        if case == "open-clip":
            (tmp_path / "empty" / "open_clip_config.json").write_text("{}")
        spec = f"hf:{tmp_path / 'empty'}"
    elif case == "not-cached":
        spec = "hf:someorg/absent"
    elif case == "no-folder":
        spec = f"hf:{tmp_path / 'absent'}"
    elif case == "no-processor":
        shutil.copytree(models_dir / "clip", tmp_path / "np")
        for f in (tmp_path / "np").glob("*"):
            if f.name not in ("config.json", "model.safetensors"):
                f.unlink()
        spec = f"hf:{tmp_path / 'np'}"
    elif case == "no-weights":
        shutil.copytree(models_dir / "clip", tmp_path / "noweights")
        (tmp_path / "noweights" / "model.safetensors").unlink()
        spec = f"hf:{tmp_path / 'noweights'}"
    elif case == "folder-with-file":
        spec = f"hf:{tmp_path / 'absent'}=weights.pt"
    else:
        spec = "hf:someorg/repo=weights.pt"
    image = make_image(tmp_path / "x.jpg")
    capsys.readouterr()  # what writing the fixtures printed
    assert main(["classify", str(image), "--labels", "cat,dog", "-m", spec]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clipcompare: error: ") and says in lines[0], err


def test_without_transformers_an_hf_spec_names_the_extra(models_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers → ImportError
    with pytest.raises(UserError, match=r"need transformers, the optional extra: pip install 'clipcompare\[hf\]'"):
        load_model(parse_spec(f"hf:{models_dir / 'clip'}"))
