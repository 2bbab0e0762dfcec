"""Lesion detector on LiteMedSAM embeddings: training, ONNX parity, "no lesion found", saved folder.

Phantoms only: an image's "embedding" is Gaussian noise plus a fixed direction
times the lesion's cell fractions (:func:`phantom_embedding`), and a stand-in for
LiteMedSAM (:class:`FakeSAM`) outlines the dark disk inside a box, so the tests
need no real data and no LiteMedSAM graphs (except the last, which uses the
packaged checkpoint when installed).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import buscad._compat  # noqa: F401  (before torch)

pytest.importorskip("torch")

from buscad.errors import ModelFileError
from buscad.segment.base import SegConfig
from buscad.segment.detector import (
    JSON_NAME,
    ONNX_NAME,
    RECOMMENDED,
    Detector,
    DetectorConfig,
    heat_target,
    valid_cells,
)
from buscad.segment.detector_train import (
    EmbeddedSet,
    HeadTrainConfig,
    export_head,
    fit_detector,
    head_runner,
    load_head,
    save_detector,
    train_head,
)
from buscad.segment.infer import MEDSAM_ARCH, Segmenter
from buscad.segment.medsam import Embedding, postprocess, resized_size

ENCODER = "e" * 64
DIRECTION = np.random.default_rng(42).normal(size=256).astype(np.float32)


def phantom(shape=(120, 160), seed=0, lesion=True) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 gray, bool mask)``: speckle, with a dark disk when ``lesion``."""
    rng = np.random.default_rng(seed)
    h, w = shape
    gray = rng.integers(110, 170, shape).astype(np.uint8)
    mask = np.zeros(shape, bool)
    if lesion:
        r = rng.uniform(0.12, 0.2) * min(h, w)
        cy, cx = rng.uniform(r + 2, h - r - 2), rng.uniform(r + 2, w - r - 2)
        yy, xx = np.mgrid[:h, :w]
        mask = np.hypot(yy - cy, xx - cx) < r
        gray[mask] = 30
    return gray, mask


def phantom_embedding(mask: np.ndarray, seed: int) -> np.ndarray:
    """``(1, 256, 64, 64)``: noise + ``3 * DIRECTION`` times the lesion's cell fractions."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1, (256, 64, 64)).astype(np.float32)
    return (noise + 3 * DIRECTION[:, None, None] * heat_target(mask)[None])[None]


class FakeSAM:
    """LiteMedSAM stand-in: embeddings of :func:`phantom_embedding`; it outlines, inside the
    box, the cells whose embedding lies along ``DIRECTION`` (the lesion), resized to the image."""

    model_hash = ENCODER
    confidence = None

    def embed(self, gray: np.ndarray) -> Embedding:
        mask = gray < 60
        return Embedding(
            phantom_embedding(mask, int(gray.sum()) % 1000), resized_size(gray.shape), gray.shape
        )

    def decode(self, emb: Embedding, box) -> tuple[np.ndarray, float]:
        frac = np.tensordot(DIRECTION, emb.array[0], axes=(0, 0)) / (3 * DIRECTION @ DIRECTION)
        big = cv2.resize(frac - 0.5, (256, 256), interpolation=cv2.INTER_LINEAR)
        inside = postprocess(big, emb.new_size, emb.shape) > 0
        x0, y0, x1, y1 = (int(v) for v in box)
        m = np.zeros(emb.shape, bool)
        m[y0:y1, x0:x1] = inside[y0:y1, x0:x1]
        return np.where(m, 8.0, -8.0).astype(np.float32), 0.9

    def logits(self, gray: np.ndarray, box) -> tuple[np.ndarray, float]:
        return self.decode(self.embed(gray), box)


@pytest.fixture(scope="module")
def phantoms() -> tuple[list, EmbeddedSet]:
    """24 phantom images (18 with a lesion) and their embedded set."""
    ims = [phantom(seed=s, lesion=s % 4 != 0) for s in range(24)]
    sam = FakeSAM()
    embs = [sam.embed(g).array[0] for g, _ in ims]
    data = EmbeddedSet(
        [f"p{i}" for i in range(len(ims))],
        np.stack(embs).astype(np.float16),
        [g.shape for g, _ in ims],
        [m for _, m in ims],
    )
    return ims, data


CFG = DetectorConfig(channels=8, dilations=[1, 2])
#: The fitted detector: the settings ``buscad segment detector`` trains with (ratio proposals,
#: every image gets candidates; normalised embedding; bounded threshold).
CFG_FIT = DetectorConfig(channels=8, dilations=[1, 2], **RECOMMENDED)
TRAIN = HeadTrainConfig(epochs=12, batch_size=8, lr=5e-3, threads=1)


def test_head_learns_phantom_lesions(phantoms) -> None:
    _, data = phantoms
    module, hist = train_head(data.embeddings, data.targets, CFG, TRAIN, rows=range(20))
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert hist["n_images"] == 20 and hist["steps"] == 12 * 3
    heat = 1 / (1 + np.exp(-head_runner(module)(data.embeddings[20:].astype(np.float32))[:, 0]))
    for k, i in enumerate(range(20, 24)):
        t = data.targets[i] > 0.5
        if t.any():  # held-out lesion: the hot cells are the lesion's
            hot = heat[k] > 0.5
            assert 2 * (hot & t).sum() / (hot.sum() + t.sum()) > 0.6
        else:
            assert heat[k].max() < 0.5


def test_pooled_training_input_trains_the_same_head(phantoms) -> None:
    _, data = phantoms
    one = HeadTrainConfig(epochs=2, batch_size=8, threads=1)
    _, raw = train_head(data.embeddings, data.targets, CFG, one, rows=range(16))
    assert data.train_input(CFG).shape == (24, 256, 32, 32)
    _, pooled = train_head(data.train_input(CFG), data.targets, CFG, one, rows=range(16))
    np.testing.assert_allclose(raw["loss"], pooled["loss"], rtol=1e-4)


def test_heat_target_and_valid_cells() -> None:
    mask = np.zeros((100, 200), bool)
    mask[:, :100] = True  # left half; the image fills 256 x 128 of the frame
    t = heat_target(mask)
    assert t.shape == (64, 64) and t[:32, :32].min() == 1.0 and t[32:].max() == 0.0
    assert t[:, 32:].max() == 0.0
    v = valid_cells((100, 200))
    assert v[:32].all() and not v[32:].any()


def test_onnx_head_matches_pytorch(phantoms, tmp_path: Path) -> None:
    from buscad.segment.base import OnnxRunner

    _, data = phantoms
    module, _ = train_head(data.embeddings, data.targets, CFG, HeadTrainConfig(epochs=1))
    path = export_head(module, tmp_path / "head.onnx")
    x = data.embeddings[:3].astype(np.float32)
    diff = np.abs(head_runner(module)(x) - OnnxRunner(path, threads=1)(x)).max()
    assert diff < 1e-4


@pytest.fixture(scope="module")
def fitted(phantoms, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A detector fitted (2 grouped folds + final head) on the phantoms and saved."""
    ims, data = phantoms
    groups = [str(i // 2) for i in range(len(ims))]
    strata = ["lesion" if m.any() else "normal" for _, m in ims]
    fit = fit_detector(data, groups, strata, FakeSAM(), CFG_FIT, TRAIN, n_folds=2)
    assert fit.rule.features == CFG_FIT.score_features
    assert set(fit.folds.tolist()) == {0, 1}
    for g in set(groups):  # a group is never split
        assert len({int(fit.folds[i]) for i in range(len(ims)) if groups[i] == g}) == 1
    return save_detector(tmp_path_factory.mktemp("det"), fit.module, CFG_FIT, fit.rule, ENCODER)


def test_segmenter_finds_the_lesion_and_reports_none_without(fitted: Path) -> None:
    det = Detector.load(fitted, encoder_sha256=ENCODER, threads=1)
    seg = Segmenter(None, SegConfig(arch=MEDSAM_ARCH), box_model=FakeSAM(), detector=det)
    assert seg.can_auto and seg.proposer == "detector"
    found = 0
    for s in range(100, 106):
        gray, mask = phantom(seed=s)
        res = seg.predict(gray)
        if res.found:
            top = res.candidates[0]
            dice = 2 * (top.mask & mask).sum() / (top.mask.sum() + mask.sum())
            found += dice > 0.8
            assert 0.0 < top.confidence <= 1.0 and top.confidence >= det.rule.threshold
            assert res.prob.shape == gray.shape and res.prob.max() <= 1.0
    assert found >= 5
    for s in range(200, 204):
        gray, _ = phantom(seed=s, lesion=False)
        res = seg.predict(gray)
        assert not res.found and res.candidates == [] and not res.mask.any()


def test_segmenter_runs_the_head_once_per_image(fitted: Path) -> None:
    """The heat-map the candidates come from is the one reported (one head run per image)."""
    det = Detector.load(fitted, encoder_sha256=ENCODER, threads=1)
    head, calls = det.head, []

    def counted(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape)
        return head(x)

    det.head = counted
    seg = Segmenter(None, SegConfig(arch=MEDSAM_ARCH), box_model=FakeSAM(), detector=det)
    gray, _ = phantom(seed=101)
    res = seg.predict(gray)
    assert res.found and calls == [(1, 256, 64, 64)]
    emb = FakeSAM().embed(gray)

    def outline(b):
        return seg._box_outline(gray.astype(np.float32) / 255, b, gray)[1]

    heat = det.heat(emb.array)
    given = det.propose(emb.array, emb.shape, outline, heat=heat)
    assert [c.box for c in given] == [c.box for c in res.candidates]
    assert [c.box for c in det.propose(emb.array, emb.shape, outline)] == [c.box for c in given]
    assert det.propose(emb.array, emb.shape, outline, heat=np.zeros_like(heat)) == []


def test_a_box_two_proposals_share_is_decoded_once(fitted: Path) -> None:
    """Margins (0.1, 0.1) give each component the same box twice: one decoder run per box."""
    det = Detector.load(fitted, encoder_sha256=ENCODER, threads=1)
    sam, boxes = FakeSAM(), []
    decode = sam.decode

    def counted(emb, box):
        boxes.append(tuple(int(v) for v in box))
        return decode(emb, box)

    sam.decode = counted  # type: ignore[method-assign]
    seg = Segmenter(None, SegConfig(arch=MEDSAM_ARCH), box_model=sam, detector=det)
    gray, _ = phantom(seed=102)
    once = seg.predict(gray)
    n_once = len(boxes)
    det.config.margins = [0.1, 0.1]
    boxes.clear()
    twice = seg.predict(gray)
    assert n_once > 0 and len(boxes) == n_once == len(set(boxes))
    assert [c.box for c in twice.candidates] == [c.box for c in once.candidates]


def test_saved_folder_round_trips_and_refuses_wrong_hashes(
    fitted: Path, phantoms, tmp_path: Path
) -> None:
    import shutil

    _, data = phantoms
    spec = json.loads((fitted / JSON_NAME).read_text())
    assert spec["encoder_sha256"] == ENCODER and spec["n_parameters"] < 1_000_000
    assert spec["version"] == 2 and spec["config"]["heat_ratios"] == [0.3, 0.5, 0.7]
    assert spec["config"]["normalize"] is True
    assert spec["rule"]["features"] == CFG_FIT.score_features
    det = Detector.load(fitted, encoder_sha256=ENCODER)
    assert det.config == CFG_FIT and det.rule.features == CFG_FIT.score_features
    x = data.embeddings[:1].astype(np.float32)
    ref = 1 / (1 + np.exp(-head_runner(load_head(fitted))(x)[0, 0]))
    assert np.abs(det.heat(x) - ref).max() < 1e-4
    with pytest.raises(
        ModelFileError, match="trained on embeddings of LiteMedSAM encoder eeeeeeeeeeee"
    ):
        Detector.load(fitted, encoder_sha256="0" * 64)
    bad = tmp_path / "bad"
    shutil.copytree(fitted, bad)
    (bad / ONNX_NAME).write_bytes((bad / ONNX_NAME).read_bytes() + b"\0")
    with pytest.raises(
        ModelFileError, match=r"detector\.onnx.*SHA-256 does not match detector\.json"
    ):
        Detector.load(bad)
    (bad / JSON_NAME).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ModelFileError, match="not a lesion detector"):
        Detector.load(bad)


def test_segmenter_folder_loads_the_detector_and_checks_the_encoder(
    fitted: Path, converted: Path, tmp_path: Path
) -> None:
    """With the packaged LiteMedSAM: add_detector refuses another encoder's head; load checks digests."""
    import shutil

    from buscad.segment.detector_train import load_head
    from buscad.segment.infer import add_detector, add_medsam
    from buscad.segment.medsam import ENCODER_NAME, read_manifest

    folder = add_medsam(tmp_path / "seg", carry=True, source=converted)
    with pytest.raises(ModelFileError, match="trained on embeddings of LiteMedSAM encoder eeee"):
        add_detector(folder, fitted)  # the phantom head was "trained" on encoder e...e
    encoder = read_manifest(converted)["sha256"][ENCODER_NAME]
    spec = json.loads((fitted / JSON_NAME).read_text())
    det_dir = save_detector(
        tmp_path / "det",
        load_head(fitted),
        CFG_FIT,
        Detector.load(fitted).rule,
        encoder,
    )
    add_detector(folder, det_dir)
    assert spec["rule"] == json.loads((folder / "detector" / JSON_NAME).read_text())["rule"]
    seg = Segmenter.load(folder)
    assert seg.can_auto and seg.proposer == "detector"
    assert seg.detector.encoder_sha256 == encoder
    # a bundle carrying it (LiteMedSAM + detector, no U-Net ONNX) loads and outlines on its own
    from tests.scale_fixtures import make_bundle

    from buscad.bundle.bundle import Bundle, add_segmenter

    bdir = make_bundle(tmp_path / "bundle", classical=False)
    doc = json.loads((bdir / "bundle.json").read_text())
    doc["segmenter"] = add_segmenter(bdir, folder, "expert")
    (bdir / "bundle.json").write_text(json.dumps(doc))
    assert not (bdir / "segmenter" / "segmenter.onnx").exists()
    b = Bundle.load(bdir)
    gray, _ = phantom(seed=100)
    p = b.predict(gray, heatmap=False)
    assert b.has_segmenter and p.roi_source in ("auto", "whole")
    if p.roi_source == "whole":  # nothing kept: said first, the call withheld
        assert p.withheld and "no lesion found" in p.cautions[0]
    shutil.copyfile(fitted / JSON_NAME, folder / "detector" / JSON_NAME)
    with pytest.raises(ModelFileError, match=r"detector\.json.*SHA-256 does not match"):
        Segmenter.load(folder)


def test_ratio_proposals_do_not_depend_on_the_heat_calibration() -> None:
    from buscad.segment.detector import heat_components

    heat = np.full((64, 64), 0.01, np.float32)
    heat[10:16, 20:30] = 0.2  # a weak (badly calibrated) blob
    heat[40:42, 40:42] = 0.08
    shape = (256, 256)
    assert heat_components(heat, shape, DetectorConfig()) == []
    comps = heat_components(heat, shape, DetectorConfig(heat_ratios=[0.3, 0.5]))
    # 0.3 * 0.2 = 0.06: both blobs; 0.5 * 0.2 = 0.1: the same first blob box, found once
    assert [c[0] for c in comps] == [(20, 10, 30, 16), (40, 40, 42, 42)]
    assert comps[0][1] == pytest.approx(0.2) and comps[1][1] == pytest.approx(0.08)
    # the padding never forms a component
    comps = heat_components(heat, (256, 64), DetectorConfig(heat_ratios=[0.3]))
    assert comps == [] or all(c[0][2] <= 16 for c in comps)


def test_candidate_features_of_a_disk() -> None:
    from buscad.segment.detector import ALL_FEATURES, candidate_features

    yy, xx = np.mgrid[:256, :256]
    mask = np.hypot(yy - 128, xx - 128) < 40
    heat = np.full((64, 64), 0.1, np.float32)
    heat[22:42, 22:42] = 0.9
    f = dict(
        zip(
            ALL_FEATURES,
            candidate_features(0.9, 0.8, 0.7, mask.mean(), heat, mask, (88, 88, 168, 168)),
            strict=True,
        )
    )
    assert f["iou_head"] == pytest.approx(0.7)
    assert f["logit_heat_max"] == pytest.approx(np.log(9))
    assert f["heat_ratio"] == pytest.approx(1.0)
    assert f["logit_heat_in"] == pytest.approx(
        np.log(9), abs=1e-3
    )  # the disk lies in the hot square
    # ring: 3 cells around the disk, partly hot (inside the square), partly 0.1
    assert 0.2 < f["heat_contrast"] < 0.8
    assert f["compactness"] == pytest.approx(1.0, abs=0.12)
    assert f["box_fill"] == pytest.approx(np.pi / 4, abs=0.02)
    empty = candidate_features(0.9, 0.8, 0.7, 0.1)
    assert empty.shape == (len(ALL_FEATURES),) and not empty[4:].any()


def test_score_rule_features_and_version_one_rules() -> None:
    from buscad.segment.detector import ALL_FEATURES, FEATURES, ScoreRule

    old = {"weights": [1.0, 0.0, 2.0, 0.0], "bias": -1.0, "threshold": 0.5}  # version 1
    r = ScoreRule.from_dict(old)
    assert r.features == list(FEATURES)
    x = np.arange(len(ALL_FEATURES), dtype=float)[None] / 10
    assert r.score(x)[0] == pytest.approx(1 / (1 + np.exp(-(0.0 + 2 * 0.2 - 1))))
    new = ScoreRule([1.0, -1.0], 0.5, 0.4, features=["heat_ratio", "box_fill"])
    back = ScoreRule.from_dict(json.loads(json.dumps(new.to_dict())))
    assert back.features == ["heat_ratio", "box_fill"]
    assert back.score(x)[0] == pytest.approx(1 / (1 + np.exp(-(0.4 - 0.8 + 0.5))))
    with pytest.raises(ModelFileError, match="unknown features \\['colour'\\]"):
        ScoreRule.from_dict({**old, "features": ["colour"], "weights": [1.0]})
    with pytest.raises(ModelFileError, match="needs 2 weights, got 4"):
        ScoreRule.from_dict({**old, "features": ["heat_ratio", "box_fill"]})


def test_chosen_threshold_is_the_best_of_a_brute_force_sweep() -> None:
    from buscad.segment.base import Candidate
    from buscad.segment.detector import ALL_FEATURES, Proposal
    from buscad.segment.detector_train import ImageProposals, choose_rule, sweep

    rng = np.random.default_rng(3)
    images = []
    for n in range(40):
        truth = np.zeros((40, 40), bool)
        if n % 5:
            truth[5:15, 5:15] = True
        props = []
        for k in range(int(rng.integers(0, 5))):
            m = np.zeros((40, 40), bool)
            good = bool(truth.any()) and rng.random() < 0.5
            if good:
                m[5:15, 5 + k % 2 : 15] = True
            else:
                m[20 + k : 30, 20:30] = True
            f = rng.normal(size=len(ALL_FEATURES))
            f[2] += 1.5 * good
            props.append(Proposal(Candidate((0, 0, 40, 40), m, 0.5), f, (0, 0, 40, 40)))
        images.append(ImageProposals.build(props, truth))
    rule = choose_rule(images, CFG, features=["iou_head", "heat_ratio"])
    assert rule.weights[0] > 0  # iou_head separates the classes
    j = lambda t: (lambda s: s["found_share"] - s["false_per_image"])(  # noqa: E731
        sweep(images, rule, CFG, t)
    )
    grid = np.unique(
        np.round(
            np.r_[
                np.linspace(0, 1, 101),
                rule.score(np.concatenate([im.features() for im in images if im.proposals])),
            ],
            4,
        )
    )
    best = max(j(float(t)) for t in grid)
    assert j(rule.threshold) == pytest.approx(best)
    assert rule.doc["at_threshold"] == sweep(images, rule, CFG, rule.threshold)
    # bounded: the most lesions found with at most 0.2 false candidates per image
    # and at least 90 % of the lesion-free images without a candidate
    b = choose_rule(
        images, CFG, features=["iou_head", "heat_ratio"], max_false=0.2, min_specificity=0.9
    )
    ok = [
        s
        for t in grid
        if (s := sweep(images, b, CFG, float(t)))["false_per_image"] <= 0.2
        and s["no_lesion_specificity"] >= 0.9
    ]
    at = sweep(images, b, CFG, b.threshold)
    assert at["false_per_image"] <= 0.2 and at["no_lesion_specificity"] >= 0.9
    assert at["found_share"] == max(s["found_share"] for s in ok)
    loose = choose_rule(images, CFG, features=["iou_head", "heat_ratio"], max_false=10.0)
    assert loose.doc["at_threshold"]["found_share"] == max(
        sweep(images, loose, CFG, float(t))["found_share"] for t in grid
    )
    assert "subject to false/images <= 0.2" in b.doc["threshold_objective"]


def test_normalised_head_ignores_a_per_channel_shift_and_scale(tmp_path: Path) -> None:
    from buscad.segment.base import OnnxRunner

    cfg = DetectorConfig(channels=8, dilations=[1], normalize=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 256, 64, 64)).astype(np.float32)
    t = np.zeros((2, 64, 64), np.float32)
    t[:, 10:20, 10:20] = 1
    module, _ = train_head(x, t, cfg, HeadTrainConfig(epochs=1, batch_size=2, threads=1))
    a = rng.uniform(0.5, 2.0, (1, 256, 1, 1)).astype(np.float32)
    b = 10 * rng.normal(size=(1, 256, 1, 1)).astype(np.float32)
    run = head_runner(module)
    assert np.abs(run(x) - run(a * x + b)).max() < 1e-3
    plain, _ = train_head(
        x, t, DetectorConfig(channels=8, dilations=[1]), HeadTrainConfig(epochs=1, threads=1)
    )
    assert np.abs(head_runner(plain)(x) - head_runner(plain)(a * x + b)).max() > 0.1
    onnx = OnnxRunner(export_head(module, tmp_path / "n.onnx"), threads=1)
    assert np.abs(onnx(x) - run(x)).max() < 1e-4


def test_a_format_one_config_keeps_its_settings() -> None:
    old = {"channels": 32, "heat_thresholds": [0.5, 0.9], "refine": 0}  # no later keys
    cfg = DetectorConfig.from_dict(old)
    assert cfg.heat_ratios == [] and cfg.normalize is False
    assert cfg.score_features == ["logit_heat_max", "logit_heat_mean", "iou_head", "log_area"]
    assert DetectorConfig.from_dict(CFG_FIT.to_dict()) == CFG_FIT
