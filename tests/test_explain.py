"""`clipcompare explain`: maps equal pytorch-grad-cam's, the pointing game tells a trained network from a
shuffled one, maps land on the right pixels of the original image, bad input is one line and writes nothing."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torchvision import transforms

from clipcompare.classes import ClassSet
from clipcompare.cli import main
from clipcompare.data.synthetic import synthetic_image
from clipcompare.errors import UserError
from clipcompare.explain import ExplainModel, ImageItem, compute_maps, explain, explain_model, find_layer
from clipcompare.explain.boxes import Box, read_boxes
from clipcompare.explain.geometry import CropGeometry, resized_size
from clipcompare.explain.layers import TargetLayer
from clipcompare.models.build_info import BuildInfo
from clipcompare.models.classifier import create_classifier
from helpers import make_image

LABELS = ["tench", "goldfish", "English springer"]


@pytest.fixture(scope="module")
def classifiers():
    torch.manual_seed(0)
    return {name: create_classifier(name, allow_random=True, templates="single")
            for name in ("resnet18", "clip:tiny-RN-quickgelu", "clip:tiny-ViT")}


def _inputs(clf, n=2, seed=0):
    rng = np.random.default_rng(seed)
    return torch.stack([clf.preprocess(synthetic_image(rng, (90, 70))) for _ in range(n)])


# --------------------------------------------------------------------------- parity with pytorch-grad-cam


def _tutorial_reshape(grid):
    """The reshape transform of pytorch-grad-cam's ViT tutorial: drop the class token, tokens to a grid."""
    def reshape(t):
        result = t[:, 1:, :].reshape(t.size(0), grid, grid, t.size(2))
        return result.transpose(2, 3).transpose(1, 2)
    return reshape


@pytest.mark.parametrize("name, layer_path, grid, method", [
    ("resnet18", "layer4.1", None, "gradcam"),
    ("clip:tiny-RN-quickgelu", "visual.layer4.0", None, "gradcam"),
    ("clip:tiny-ViT", "visual.transformer.resblocks.1.ln_1", 4, "gradcam"),
    ("clip:tiny-RN-quickgelu", "visual.layer4.0", None, "gradcam++"),
])
def test_maps_equal_grad_cam_on_the_same_model_layer_and_target(classifiers, name, layer_path, grid, method):
    clf = classifiers[name]
    classes = ClassSet.from_labels(LABELS)
    model = explain_model(clf, classes)
    assert model.layer.name == layer_path  # chosen by the architecture
    x = _inputs(clf)
    # the zero-shot logits are classify's own: logit scale x cosine with the head
    with torch.no_grad():
        assert torch.allclose(model.logits(x), clf.logits(x, classes).float())
    with torch.no_grad():  # the top-1 and the least likely class: two different targets
        scores = model.logits(x)
    targets = [int(scores[0].argmax()), int(scores[1].argmin())]
    ours, logits = compute_maps(model.logits, model.layer, [x[:1], x[1:]], targets, method=method)
    # only the layer's activation was differentiated: no gradient on any weight, every flag restored
    assert all(p.requires_grad and p.grad is None for p in clf.model.parameters())
    ref_cls = GradCAM if method == "gradcam" else GradCAMPlusPlus
    ref = ref_cls(model=model.logits, target_layers=[clf.model.get_submodule(layer_path)],
                  reshape_transform=_tutorial_reshape(grid) if grid else None)
    expected = ref(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    assert ours.shape == expected.shape == (2, *x.shape[-2:])
    np.testing.assert_allclose(ours, expected, atol=2e-5)
    assert ours[0].max() > 0.99  # not all zeros: grad-cam scales each map to [0, 1]
    with torch.no_grad():
        assert torch.allclose(logits, model.logits(x), atol=1e-5)


def test_top1_is_explained_when_no_class_is_given(classifiers):
    clf = classifiers["clip:tiny-RN-quickgelu"]
    model = explain_model(clf, ClassSet.imagenet())
    x = _inputs(clf, 2)
    ours, logits = compute_maps(model.logits, model.layer, [x], [None, None])
    top = logits.argmax(dim=-1).tolist()
    expected = GradCAM(model=model.logits, target_layers=[clf.model.visual.layer4[-1]])(
        input_tensor=x, targets=[ClassifierOutputTarget(t) for t in top])
    np.testing.assert_allclose(ours, expected, atol=2e-5)


def test_layers_of_timm_and_transformers_towers_by_structure():
    timm = pytest.importorskip("timm")
    transformers = pytest.importorskip("transformers")
    resnet = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    assert find_layer(resnet).name == f"layer4.{len(resnet.layer4) - 1}"
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, depth=2)
    layer = find_layer(vit)
    assert layer.name == "blocks.1.norm1" and layer.reshape is not None
    convnext = timm.create_model("convnext_atto", pretrained=False, num_classes=3)
    assert find_layer(convnext).name == "stages.3"
    cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=32, patch_size=8)
    hf = transformers.CLIPVisionModel(cfg)
    hf_layer = find_layer(hf)
    assert hf_layer.name.endswith("encoder.layers.1.layer_norm1") and hf_layer.reshape is not None
    siglip = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8))
    siglip_layer = find_layer(siglip)
    assert siglip_layer.name.endswith("encoder.layers.1.layer_norm1")
    grid = siglip_layer.reshape(torch.zeros(1, 16, 32))  # no class token: all 16 tokens are the 4x4 grid
    assert grid.shape == (1, 32, 4, 4) and siglip_layer.reshape.seen == (0, 4, 4)
    # a clipcompare train checkpoint: the backbone inside its image tower
    from clipcompare.models.contrastive import Architecture, build_untrained

    trained = build_untrained(Architecture("resnet18", "clip:tiny-RN-quickgelu", True, 64, 64, True))
    assert find_layer(trained).name == "visual.backbone.layer4.1"
    # a timm ViT's map equals grad-cam's with the tutorial's reshape (one class token)
    x = torch.rand(2, 3, 32, 32)
    ours, _ = compute_maps(vit, layer, [x], [0, 2])
    expected = GradCAM(model=vit, target_layers=[vit.blocks[-1].norm1], reshape_transform=_tutorial_reshape(2))(
        input_tensor=x, targets=[ClassifierOutputTarget(0), ClassifierOutputTarget(2)])
    np.testing.assert_allclose(ours, expected, atol=2e-5)
    # --layer overrides, with [i] indexing
    assert find_layer(resnet, "layer3[-1]").name == f"layer3.{len(resnet.layer3) - 1}"


def test_a_swin_is_explained_at_its_last_stage_channels_last_permuted():
    timm = pytest.importorskip("timm")
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=3, img_size=32, patch_size=4,
                             embed_dim=8, depths=(1, 1), num_heads=(1, 2), window_size=2).eval()
    layer = find_layer(swin)
    assert layer.name == "layers.1.blocks.0.norm1" and layer.module is swin.layers[-1].blocks[-1].norm1
    x = torch.rand(2, 3, 32, 32)
    ours, _ = compute_maps(swin, layer, [x], [0, 2])
    # grad-cam's Swin recipe on timm's [B, H, W, C] norm1 output: channels-last to NCHW
    expected = GradCAM(model=swin, target_layers=[swin.layers[-1].blocks[-1].norm1],
                       reshape_transform=lambda t: t.permute(0, 3, 1, 2))(
        input_tensor=x, targets=[ClassifierOutputTarget(0), ClassifierOutputTarget(2)])
    np.testing.assert_allclose(ours, expected, atol=2e-5)
    assert ours.max() > 0.99


def test_a_model_with_no_layer_to_explain_names_layer():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(UserError, match="--layer") as err:
        find_layer(mlp, model_name="mlp")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"--layer layer9: .* no module 'layer9'"):
        find_layer(nn.Sequential(nn.Conv2d(3, 3, 1)), "layer9")


# --------------------------------------------------------------------------- the pointing game

COLOURS = torch.tensor([(1.0, 0.1, 0.1), (0.1, 0.9, 0.1), (0.15, 0.15, 1.0)])  # red, green, blue


def _squares(n: int, size: int, gen: torch.Generator, classes: int = 4):
    """Images [n, 3, size, size] of noise with a square of the class's colour in a random quadrant (class 3:
    no square), the labels, and the square's box (x0, y0, x1, y1). Class 3 makes each colour class need its
    colour: a network could otherwise tell one class by the absence of the others, its map pointing nowhere."""
    q, side = size // 2, size * 5 // 16
    x = torch.rand(n, 3, size, size, generator=gen) * 0.3 + 0.25
    labels = torch.randint(0, classes, (n,), generator=gen)
    boxes = []
    for i in range(n):
        quadrant = int(torch.randint(0, 4, (1,), generator=gen))
        dy, dx = torch.randint(1, q - side, (2,), generator=gen).tolist()
        y0, x0 = (quadrant // 2) * q + dy, (quadrant % 2) * q + dx
        if labels[i] < len(COLOURS):
            x[i, :, y0:y0 + side, x0:x0 + side] = COLOURS[labels[i]][:, None, None]
        boxes.append((x0, y0, x0 + side, y0 + side))
    return x, labels, boxes


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def _as_model(net: nn.Module, name: str) -> ExplainModel:
    """The network as explain sees a model: its own preprocessing (a plain resize to 32 px; nearest, so
    the 8x-blown-up test images come back as the very pixels the network was trained on)."""
    preprocess = transforms.Compose([transforms.Resize((32, 32), transforms.InterpolationMode.NEAREST),
                                     transforms.ToTensor()])
    return ExplainModel(name, net, preprocess, find_layer(net))


def test_pointing_game_tells_a_trained_network_from_its_shuffled_weights(tmp_path):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x, y, _ = _squares(512, 32, gen)
    net = TinyCNN()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(600):  # a second or two
        idx = torch.randint(0, len(x), (32,), generator=gen)
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.005:
            break
    shuffled = copy.deepcopy(net)
    with torch.no_grad():
        for p in shuffled.parameters():
            p.copy_(p.flatten()[torch.randperm(p.numel(), generator=gen)].view_as(p))

    # test images shown at 8x the input size (each pixel a block), boxes in those pixels, read from a CSV
    small, labels, squares = _squares(40, 32, gen, classes=3)
    squares = [tuple(8 * v for v in box) for box in squares]
    paths, images = [], []
    for i, img in enumerate(small):
        im = Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).resize(
            (256, 256), Image.NEAREST)
        paths.append(tmp_path / f"img_{i}.png")
        im.save(paths[-1])
        images.append(im)
    classes = ClassSet.from_labels(["red", "green", "blue", "none"])
    with open(tmp_path / "boxes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "x0", "y0", "x1", "y1", "class"])
        for p, box, label in zip(paths, squares, labels):
            w.writerow([p.name, *box, classes.names[int(label)]])
    boxes = read_boxes(tmp_path / "boxes.csv", paths, [im.size for im in images], classes)
    assert [b[0].class_index for b in boxes] == labels.tolist()

    result = explain([_as_model(net, "trained"), _as_model(shuffled, "shuffled")],
                     [ImageItem(p, im) for p, im in zip(paths, images)], classes, boxes=boxes)
    trained, random = result["pointing"]["trained"], result["pointing"]["shuffled"]
    assert trained["images"] == random["images"] == 40
    assert trained["accuracy"] >= 0.9, trained
    assert random["accuracy"] < 0.9, random
    assert trained["energy_in_boxes"] > random["energy_in_boxes"]
    # the pointing game explains the true class (Zhang et al.), whatever the top-1
    assert all(img["models"]["shuffled"]["class_index"] == int(lab) for img, lab in zip(result["images"], labels))


@pytest.mark.parametrize("method", ["scorecam", "eigencam"])
def test_gradient_free_methods_equal_grad_cam_too(method):
    from pytorch_grad_cam import EigenCAM, ScoreCAM

    torch.manual_seed(0)
    net = TinyCNN().eval()
    x = torch.rand(2, 3, 32, 32)
    ours, _ = compute_maps(net, find_layer(net), [x[:1], x[1:]], [1, 3], method=method)
    ref = (ScoreCAM if method == "scorecam" else EigenCAM)(model=net, target_layers=[net.features[-1]])
    np.testing.assert_allclose(ours, ref(input_tensor=x, targets=[ClassifierOutputTarget(1),
                                                                  ClassifierOutputTarget(3)]), atol=2e-5)


# --------------------------------------------------------------------------- geometry


def _build(resize, crop, mode="shortest") -> BuildInfo:
    return BuildInfo("test", "ReLU", "test", None, resize, crop, "bilinear", mode, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0),
                     "test")


def test_crop_and_resize_are_undone_by_hand():
    # 200x100 image, shorter side to 50 (100x50), centre crop 40: crop box x 30..70, y 5..45 of the resized
    geo = CropGeometry.from_build(100, 200, _build(50, 40))
    assert (geo.resized_width, geo.resized_height, geo.left, geo.top) == (100, 50, 30, 5)
    assert geo.input_to_original(0, 0) == (60.5, 10.5)
    hot = np.zeros((40, 40), dtype=np.float32)
    hot[0:10, 0:10] = 1.0  # the crop's top-left 10x10 → original x 60..80, y 10..30
    original = geo.to_original(hot)
    assert original.shape == (100, 200)
    inside = original[12:28, 62:78]
    assert inside.min() == pytest.approx(1.0)
    assert original[:, :59].max() == 0 and original[:, 82:].max() == 0 and original[31:].max() == 0
    assert geo.visible_box() == (60.0, 10.0, 140.0, 90.0)
    # torchvision's own resize rounding, and open_clip's keep-ratio / squash modes
    assert resized_size(375, 500, 256, "shortest") == (256, 341)
    assert resized_size(375, 500, [224, 224], "longest") == (168, 224)
    assert resized_size(375, 500, 224, "squash") == (224, 224)


def test_a_squash_then_centre_crop_is_undone_by_hand():
    # timm crop_pct 0.875, crop_mode squash: 200x100 squashed to 64x64, centre crop 56 (offset 4)
    geo = CropGeometry.from_build(100, 200, _build(64, 56, "squash"))
    assert (geo.resized_width, geo.resized_height, geo.left, geo.top, geo.crop_width) == (64, 64, 4, 4, 56)
    # the crop's top-left pixel: resized pixel (4, 4) → original x (4.5 * 200/64) - 0.5, y (4.5 * 100/64) - 0.5
    assert geo.input_to_original(0, 0) == pytest.approx((4.5 * 200 / 64 - 0.5, 4.5 * 100 / 64 - 0.5))
    assert geo.visible_box() == pytest.approx((4 * 200 / 64, 4 * 100 / 64, 60 * 200 / 64, 60 * 100 / 64))
    # the same through torchvision: a marked crop pixel lands where the geometry says
    img = np.zeros((100, 200, 3), dtype=np.uint8)
    img[40:60, 150:170] = 255
    x = transforms.Compose([transforms.Resize((64, 64)), transforms.CenterCrop(56), transforms.ToTensor()])(
        Image.fromarray(img))[0].numpy()
    back = geo.to_original(x)
    assert back[45:55, 155:165].min() > 0.9 and back[:, :140].max() == 0
    # a squash with no smaller crop stays the plain resize
    plain = CropGeometry.from_build(100, 200, _build(64, 64, "squash"))
    assert (plain.left, plain.top, plain.crop_width, plain.crop_height) == (0, 0, 64, 64)


class RedDetector(nn.Module):
    """Class 0 = how red the image is: Grad-CAM of class 0 is the red channel's excess, so it peaks on red."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 1, 1), nn.ReLU())
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1))
            self.features[0].bias.zero_()
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_a_cropped_models_map_lands_on_the_right_pixels_of_the_original(tmp_path):
    img = np.full((100, 200, 3), 128, dtype=np.uint8)
    img[40:60, 100:120] = (255, 0, 0)  # a red square right of the centre, inside the crop
    image = Image.fromarray(img)
    net = RedDetector()
    layer = TargetLayer("features", net.features)
    cropped = ExplainModel("cropped", net, transforms.Compose([
        transforms.Resize(50), transforms.CenterCrop(40), transforms.ToTensor()]), layer, _build(50, 40))
    squashed = ExplainModel("squashed", net, transforms.Compose([
        transforms.Resize((64, 64)), transforms.ToTensor()]), layer, _build(64, 64, "squash"))
    result = explain([cropped, squashed], [ImageItem(tmp_path / "red.png", image)], ClassSet(("red", "other")),
                     target=0, out=tmp_path / "out")
    for name in ("cropped", "squashed"):
        x, y = result["images"][0]["models"][name]["peak"]
        assert 100 <= x < 120 and 40 <= y < 60, (name, x, y)
    from clipcompare.explain.run import read_maps

    maps = read_maps(tmp_path / "out", json.loads((tmp_path / "out/explain.json").read_text())["images"][0])
    assert maps["cropped"].shape == maps["squashed"].shape == (100, 200)
    assert maps["cropped"][:, :55].max() == 0  # left of the crop: never seen by the cropped model
    assert maps["cropped"][45:55, 105:115].min() > 0.5 and maps["squashed"][45:55, 105:115].min() > 0.5


def test_boxes_of_class_0_label_the_target_as_the_true_class(tmp_path):
    img = np.full((40, 40, 3), 128, dtype=np.uint8)
    img[5:15, 5:15] = (255, 0, 0)
    net = RedDetector()
    model = ExplainModel("red", net, transforms.ToTensor(), TargetLayer("features", net.features))
    result = explain([model], [ImageItem(tmp_path / "r.png", Image.fromarray(img))], ClassSet(("red", "other")),
                     boxes=[[Box(0, 0, 20, 20, 0)]])  # class index 0: falsy, still the true class
    assert result["target"] == "true class (boxes)"
    assert result["images"][0]["models"]["red"]["target"] == "true class"
    assert result["pointing"]["red"]["hits"] == 1


def test_a_failing_later_batch_keeps_the_earlier_batches_files(tmp_path):
    net = RedDetector()
    seen = []

    def preprocess(image):
        seen.append(image)
        if len(seen) == 3:
            raise RuntimeError("the third image breaks")
        return transforms.functional.to_tensor(image)

    model = ExplainModel("red", net, preprocess, TargetLayer("features", net.features))
    items = [ImageItem(tmp_path / f"{k}.png", Image.new("RGB", (20, 20), (200, 10 * k, 0))) for k in range(3)]
    with pytest.raises(RuntimeError, match="third image"):
        explain([model], items, ClassSet(("red", "other")), out=tmp_path / "out", batch_size=1)
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == [
        "0000-0.npz", "0000-0.png", "0001-1.npz", "0001-1.png"]


# --------------------------------------------------------------------------- the command


def _images(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    make_image(folder / "a.jpg", (120, 80), seed=1)
    make_image(folder / "b.png", (64, 100), seed=2)
    return folder


TINY = ["-m", "resnet18", "-m", "clip:tiny-RN-quickgelu", "--allow-random", "--templates", "single"]


def test_explain_cli_writes_pngs_maps_and_json(tmp_path, capsys):
    folder = _images(tmp_path)
    (folder / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert main(["explain", str(folder), *TINY, "--labels", ",".join(LABELS), "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    stored = json.loads((out / "explain.json").read_text())
    assert printed == stored
    assert [Path(i["path"]).name for i in stored["images"]] == ["a.jpg", "b.png"]
    assert [s["path"] for s in stored["skipped"]] == [str(folder / "broken.jpg")]
    assert {m["name"]: m["layer"]["name"] for m in stored["models"]} == {
        "resnet18:IMAGENET1K_V1": "layer4.1", "clip:tiny-RN-quickgelu": "visual.layer4.0"}
    for entry in stored["images"]:
        assert Image.open(out / entry["png"]).size[0] > 300
        with np.load(out / entry["maps"]) as npz:
            for model, rec in entry["models"].items():
                original = npz[rec["map_key"]].astype(np.float32)
                assert original.shape == (entry["height"], entry["width"])
                if rec["peak"] is None:  # a map with no positive evidence points nowhere
                    assert original.max() == 0
                else:
                    x, y = rec["peak"]
                    assert original[y, x] == original.max() > 0
                assert rec["class"] == rec["top1"] and rec["class"] in LABELS
                assert 0 < rec["probability"] <= 1
    assert not list(out.glob(".*tmp")) and not (out / ".clipcompare.lock").exists()


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("clipcompare: error: "), err
    return err[0]


def _nothing_written(out: Path) -> bool:
    return not out.exists() or not list(out.rglob("*"))


def test_bad_class_and_layer_are_one_line_and_write_nothing(tmp_path, capsys):
    folder = _images(tmp_path)
    out = tmp_path / "out"
    argv = ["explain", str(folder), *TINY, "--labels", ",".join(LABELS), "--out", str(out)]
    assert main([*argv, "--class", "bald eagle"]) == 2
    assert "--class 'bald eagle' is not among the 3 labels" in _error(capsys)
    assert main([*argv, "--layer", "layer4[7]"]) == 2
    assert "--layer layer4[7]" in _error(capsys)
    assert _nothing_written(out)
    (tmp_path / "run").mkdir()
    assert main(["explain", "--run", str(tmp_path / "run")]) == 2
    assert "not an evaluate run directory" in _error(capsys)
    (tmp_path / "run" / "run.json").write_text("{}")
    assert main(["explain", "--run", str(tmp_path / "run")]) == 2
    assert "the evaluate run is unfinished" in _error(capsys)
    assert main(["explain", str(folder), "--run", str(tmp_path / "run")]) == 2
    assert "name no images with it" in _error(capsys)
    assert _nothing_written(tmp_path / "run" / "explain")


def test_undecodable_images_are_skipped_and_counted_or_refused(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"nope")
    (bad / "y.png").write_bytes(b"")
    out = tmp_path / "out"
    assert main(["explain", str(bad), *TINY, "--out", str(out)]) == 2
    assert "no readable image among 2 files" in _error(capsys)
    assert main(["explain", str(bad / "x.jpg"), *TINY, "--out", str(out)]) == 2
    assert "cannot read image" in _error(capsys)
    assert _nothing_written(out)


def test_boxes_that_do_not_match_the_images_are_one_line(tmp_path, capsys):
    folder = _images(tmp_path)
    out = tmp_path / "out"
    argv = ["explain", str(folder), *TINY, "--labels", ",".join(LABELS), "--out", str(out), "--boxes"]
    cases = {
        "path,x0,y0,x1,y1\nelsewhere.jpg,1,1,5,5\n": "has no box for any of the 2 images",
        "path,x0,y0,x1,y1\na.jpg,10,10,500,20\n": "is not inside its 120x80 image",
        "file,left,top,right,bottom\na.jpg,1,1,5,5\n": "expected the header",
        "path,x0,y0,x1,y1,class\na.jpg,1,1,5,5,bald eagle\n": "class 'bald eagle' is not among the 3 labels",
    }
    for k, (text, message) in enumerate(cases.items()):
        (tmp_path / f"boxes{k}.csv").write_text(text)
        assert main([*argv, str(tmp_path / f"boxes{k}.csv")]) == 2
        assert message in _error(capsys)
    xml = tmp_path / "xml"
    xml.mkdir()
    (xml / "a.xml").write_text("<annotation><size><width>500</width><height>375</height></size><object>"
                               "<name>n01440764</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax>"
                               "</bndbox></object></annotation>")
    assert main([*argv, str(xml)]) == 2
    assert "is for a 500x375 image" in _error(capsys)
    (xml / "a.xml").write_text("<annotation><size><width></width><height>80</height></size></annotation>")
    assert main([*argv, str(xml)]) == 2
    assert "its <size> has no numeric <width>/<height>" in _error(capsys)
    assert _nothing_written(out)


def test_ilsvrc_xml_boxes_are_read(tmp_path):
    image = tmp_path / "ILSVRC2012_val_00000001.JPEG"
    make_image(image, (120, 80))
    xml = tmp_path / "xml"
    xml.mkdir()
    (xml / "ILSVRC2012_val_00000001.xml").write_text(
        "<annotation><filename>ILSVRC2012_val_00000001</filename><size><width>120</width><height>80</height></size>"
        + "".join(f"<object><name>n01440764</name><bndbox><xmin>{a}</xmin><ymin>2</ymin><xmax>{a + 10}</xmax>"
                  f"<ymax>30</ymax></bndbox></object>" for a in (5, 50)) + "</annotation>")
    boxes = read_boxes(xml, [image], [(120, 80)], ClassSet.from_labels(LABELS))
    assert boxes == [[Box(5, 2, 15, 30, 0), Box(50, 2, 60, 30, 0)]]


# --------------------------------------------------------------------------- --run and the report


def test_explain_run_covers_the_report_galleries_and_the_report_shows_the_maps(tmp_path, monkeypatch, capsys):
    import report_runs
    from clipcompare.evaluation.galleries import gallery_images
    from clipcompare.report import build_report, write_html

    monkeypatch.setattr(report_runs, "MODEL_A", "resnet18:IMAGENET1K_V1")
    monkeypatch.setattr(report_runs, "MODEL_B", "clip:tiny-RN-quickgelu")
    run, _ = report_runs.make_evaluate_run(tmp_path, per_class=2)
    assert main(["explain", "--run", str(run), "--allow-random", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    wanted = {g.name: sorted(k for k, _, _ in g.items) for g in gallery_images(run)}
    assert sum(map(len, wanted.values())) > 0
    for name, keys in wanted.items():
        stored = json.loads((run / "explain" / name / "explain.json").read_text())
        assert sorted(e["key"] for e in stored["images"]) == keys
        assert printed["datasets"][name] == stored
    report = build_report([run])
    tiles = [t for s in report.sections for b in s.blocks if getattr(b, "kind", "") == "gallery" for t in b.tiles]
    assert tiles and all([m.model for m in t.maps] == ["resnet18:IMAGENET1K_V1", "clip:tiny-RN-quickgelu"]
                         for t in tiles)
    html = write_html(report, tmp_path / "report.html").read_text()
    assert html.count('<figure data-model="clip:tiny-RN-quickgelu">') == len(tiles)


def test_boxes_give_the_pointing_table_in_json_terminal_and_report(tmp_path, capsys):
    from clipcompare.report import build_report

    folder = _images(tmp_path)
    (tmp_path / "boxes.csv").write_text("path,x0,y0,x1,y1,class\n"
                                        f"{folder / 'a.jpg'},0,0,60,80,tench\na.jpg,60,0,120,40,tench\n"
                                        "b.png,0,0,64,50,goldfish\n")
    out = tmp_path / "out"
    argv = ["explain", str(folder), "-m", "clip:tiny-RN-quickgelu", "--allow-random", "--templates", "single",
            "--labels", ",".join(LABELS), "--out", str(out), "--boxes", str(tmp_path / "boxes.csv"),
            "--method", "eigencam"]  # class-agnostic, never all zero: random weights have energies to compare
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "pointing game (15-px tolerance)" in printed
    result = json.loads((out / "explain.json").read_text())
    stats = result["pointing"]["clip:tiny-RN-quickgelu"]
    images = result["images"]
    assert [len(i["boxes"]) for i in images] == [2, 1] and [i["true_class"] for i in images] == ["tench", "goldfish"]
    records = [i["models"]["clip:tiny-RN-quickgelu"] for i in images]
    assert [r["class"] for r in records] == ["tench", "goldfish"]  # the true class is mapped
    assert stats["images"] == 2 and stats["hits"] == sum(r["pointing_hit"] for r in records)
    assert stats["energy_in_boxes"] == pytest.approx(np.mean([r["energy_in_boxes"] for r in records]))
    # a.jpg's boxes cover its left half and the top of its right half: 3/4 of the pixels
    with np.load(out / images[0]["maps"]) as npz:
        m = npz["model0"].astype(np.float64)
    covered = m[:, :60].sum() + m[:40, 60:].sum()
    assert records[0]["energy_in_boxes"] == pytest.approx(covered / m.sum(), rel=1e-3)

    section = build_report([out]).sections[0]
    assert section.kind == "explain"
    table = next(b for b in section.blocks if getattr(b, "role", "") == "pointing")
    assert [c.value for c in table.rows[0][1:3]] == [2, stats["hits"]]
    assert sum(1 for b in section.blocks if b.kind == "figure") == 2


def test_explain_run_checks_the_boxes_before_loading_any_model(tmp_path, monkeypatch, capsys):
    import report_runs
    from clipcompare.cli import explain_cmd

    run, _ = report_runs.make_evaluate_run(tmp_path, per_class=2)
    loaded = []
    monkeypatch.setattr(explain_cmd, "_load", lambda *a, **k: loaded.append(a) or [])
    (tmp_path / "boxes.csv").write_text("path,x0,y0,x1,y1\nelsewhere.jpg,1,1,5,5\n")
    assert main(["explain", "--run", str(run), "--allow-random", "--boxes", str(tmp_path / "boxes.csv")]) == 2
    assert "has no box for any gallery image of" in _error(capsys)
    assert not loaded and _nothing_written(run / "explain")


def test_a_runs_dataset_is_read_again_as_evaluate_read_it(tmp_path, caplog):
    from clipcompare.data import build_dataset, parse_dataset_arg
    from clipcompare.evaluation.galleries import dataset_of_run
    from test_objectnet import make_objectnet

    root, plain = make_objectnet(tmp_path)
    scanned = build_dataset(parse_dataset_arg(f"objectnet={root}"))
    run = tmp_path / "run"
    run.mkdir()
    # as evaluate records it: the scanned root (ObjectNet's images/ folder)
    (run / "run.json").write_text(json.dumps({"datasets": [
        {"name": "objectnet", "kind": "objectnet", "root": str(scanned.root.resolve())}]}))
    source = dataset_of_run(run, "objectnet")
    key = scanned.samples[0].path
    folder, name = key.split("/")
    unframed = np.asarray(Image.open(plain / folder.replace("_", " ") / name).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(source.open(key)), unframed)  # the 1-pixel frame cropped
    flat = ClassSet(scanned.classes.names)
    assert source.classes(flat).imagenet_groups == scanned.classes.imagenet_groups is not None
    # the release moved its mappings away: the image file as it is, the predictions' classes
    (root / "objectnet-1.0" / "mappings").rename(tmp_path / "gone")
    moved = dataset_of_run(run, "objectnet")
    assert np.asarray(moved.open(key)).shape == (unframed.shape[0] + 2, unframed.shape[1] + 2, 3)
    assert moved.classes(flat) is flat and "cannot be read again" in caplog.text


def test_a_wds_runs_images_open_from_their_shards(tmp_path):
    from clipcompare.data import build_dataset, parse_dataset_arg
    from clipcompare.evaluation.galleries import dataset_of_run
    from test_wds import CLASSES, TEMPLATES, export_folder

    folder = tmp_path / "folder"
    for k, c in enumerate(CLASSES):
        make_image(folder / c / "x.png", (40, 30), seed=k)
    scanned = build_dataset(parse_dataset_arg(f"wds={export_folder(folder, tmp_path / 'wds', CLASSES)}"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps({"datasets": [
        {"name": "wds", "kind": "wds", "root": str(scanned.root.resolve()), "option": None}]}))
    source = dataset_of_run(tmp_path / "run", "wds")
    for sample, c in zip(scanned.samples, CLASSES):  # keys such as 0.tar/s0000000: no file under root
        assert not (source.root / sample.path).is_file()
        expected = np.asarray(Image.open(folder / c / "x.png").convert("RGB"))
        np.testing.assert_array_equal(np.asarray(source.open(sample.path)), expected)
    templates = source.classes(ClassSet(tuple(CLASSES))).templates  # the set's own, for --templates dataset
    assert templates == scanned.classes.templates and len(templates) == len(TEMPLATES)
