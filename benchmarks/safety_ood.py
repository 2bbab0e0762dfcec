"""How often the out-of-distribution check fires (docs/safety.md), on real images.

The OOD model (docs/safety.md): a k-NN (k = 5) in a frozen ImageNet EfficientNet-Lite0's
feature space of the region the CNN reads, limit at the 99th percentile of the training rows'
out-of-fold distances (:mod:`buscad.bundle.ood_encoder`). ``busi_bundle_cnn_space`` measures
the first design beside it: the bundle CNN's own features, leave-one-out limit.

Part 1 (``--bundle``, a bundle trained on BUSI): the share of images the OOD check
(:class:`buscad.bundle.safety.FeatureOOD`, ratio > 1) flags among pydicom's ultrasound
examples (none of them a breast B-mode: a colour-Doppler lymph node, cardiac echoes, ...;
read whole, as a user would upload them), BUSI's colour images (read with their masks),
BrEaST images (the external cohort; with their tumour masks, as in training, and whole) and
BUSI's held-out internal-test rows (with their masks). Part 2 (``--demo-bundle``, the bundle
``make demo`` trains on phantoms): whether any result on 30 BUSI images and pydicom's examples
is an unmarked AI call (no banner, not withheld, no caution).

The BUSI bundle of the numbers in benchmarks/results/safety_ood.json came from
``buscad study run`` on this config (deep model only, to be quick on 2 CPU cores)::

    cohorts: [{name: BUSI, role: development, manifest: busi.csv},
              {name: BrEaST, role: external, manifest: breast.csv}]
    audit: {duplicates: drop_conflicts}
    split: {test_size: 0.3, cv_folds: 3}
    models: [deep]
    deep: {backbones: [efficientnet_lite0], pretrained: imagenet, input_size: 96, epochs: 3,
           batch_size: 32, selection_folds: 2, patience: 2}
    gallery_size: 0

with ``busi.csv`` and ``breast.csv`` from ``buscad data import busi|breast-lesions-usg``.
Data: BUSI (Al-Dhabyani et al., Data in Brief 28:104863, 2020; CC0); BrEaST-Lesions_USG
(Pawlowska et al., Sci Data 11:148, 2024; TCIA DOI 10.7937/9WKK-Q141; CC BY 4.0).

Usage::

    python benchmarks/safety_ood.py --bundle RUN/bundle --manifest RUN/cache/split-*/manifest.csv \
        [--demo-bundle runs/demo/study/bundle --demo-manifest runs/demo/study/cache/split-*/manifest.csv] -o benchmarks/results/safety_ood.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from buscad.bundle.bundle import Bundle, add_ood
from buscad.bundle.ood_encoder import SPACE, training_features
from buscad.bundle.safety import training_from_rows, with_image_checks
from buscad.data.io import read_image, read_mask, reader_settings
from buscad.data.manifest import Manifest
from buscad.data.quality import image_checks
from buscad.utils import atomic_write_json

BUSI = Path("../shared/data/BUSI/Dataset_BUSI_with_GT")
PYDICOM_US = (
    "examples_rgb_color.dcm",
    "examples_palette.dcm",
    "examples_jpeg2k.dcm",
    "ExplVR_BigEnd.dcm",
    "examples_ybr_color.dcm",
)


def _pydicom() -> list[tuple[str, np.ndarray, object]]:
    from pydicom.data import get_testdata_file

    out = []
    for n in PYDICOM_US:
        with reader_settings(allow_modality=True):
            g, meta = read_image(get_testdata_file(n))
        out.append((n, g, meta))
    return out


def _share(flags: list[bool]) -> dict:
    return {"n": len(flags), "flagged": int(sum(flags)), "share": round(float(np.mean(flags)), 4)}


def measure_busi_bundle(bundle: Path, manifest: Path) -> dict:
    """Part 1: the OOD check's flag rates with a bundle trained on BUSI."""
    b = Bundle.load(bundle)
    man = Manifest.load(manifest)
    df = man.df
    res: dict = {"bundle": str(bundle), "ood_limit": b.ood.limit, "k": b.ood.k}

    res["ood_space"] = b.ood.space
    res["limit_rule"] = b.ood.limit_rule

    def ratio(gray, mask=None) -> float:
        return float(b.predict(gray, mask=mask, heatmap=False).ood_ratio)

    def withheld(gray, meta, mask=None) -> bool:
        """The AI call withheld: out of distribution, a colour (Doppler) image, or both."""
        return with_image_checks(b.predict(gray, mask=mask, heatmap=False), meta).withheld

    pyd = _pydicom()
    py = {n: ratio(g) for n, g, _ in pyd}
    res["pydicom_us_whole"] = {**_share([r > 1 for r in py.values()]), "ratios": py}
    held = [withheld(g, meta) for _, g, meta in pyd]
    rows = {"internal_test": df[(df["split"] == "test") & (df["cohort"] == "BUSI")]}
    rows["breast"] = df[df["cohort"] == "BrEaST"]
    colour, colour_r = [], {}
    for p in sorted(BUSI.glob("*/*).png")):
        g, meta = read_image(p)
        if image_checks(g, meta.colour_fraction).doppler:
            mp = p.with_name(p.stem + "_mask.png")
            m = read_mask(mp, shape=g.shape) if mp.exists() else None
            colour_r[p.name] = ratio(g, m if m is not None and m.any() else None)
            colour.append(colour_r[p.name] > 1)
            held.append(withheld(g, meta, m if m is not None and m.any() else None))
    res["busi_colour_images_mask"] = {**_share(colour), "ratios": colour_r}
    both = [*res["pydicom_us_whole"]["ratios"].values(), *colour_r.values()]
    res["pydicom_and_colour"] = _share([r > 1 for r in both])
    # what the user gets: the call withheld by the OOD check or the colour check
    res["pydicom_and_colour_withheld"] = _share(held)
    for name, sub in rows.items():
        with_mask, whole = [], []
        for i in np.flatnonzero(df.index.isin(sub.index)):
            g, _ = read_image(man.image_path(i))
            m = read_mask(man.mask_paths(i), shape=g.shape)
            with_mask.append(ratio(g, m) > 1)
            if name == "breast":
                whole.append(ratio(g) > 1)
        res[f"{name}_mask"] = _share(with_mask)
        if whole:
            res[f"{name}_whole"] = _share(whole)
    return res


def measure_cnn_space(bundle: Path, manifest: Path) -> dict:
    """The first design, for comparison: the OOD model in the bundle's own CNN's feature
    space, fitted on its training rows' features with the leave-one-out limit."""
    from buscad.bundle.safety import FeatureOOD

    b = Bundle.load(bundle)
    man = Manifest.load(manifest)
    df = man.df

    def feats(i: int | None = None, gray=None) -> np.ndarray:
        m = None
        if i is not None:
            gray, _ = read_image(man.image_path(i))
            m = read_mask(man.mask_paths(i), shape=gray.shape)
        return b._score_and_cam(b._prepare(gray, m, auto_roi=False).crop, False)[2]

    is_busi = (df["cohort"] == "BUSI").to_numpy()
    tr = np.flatnonzero((df["split"] == "train").to_numpy() & is_busi)
    ood = FeatureOOD.fit(np.stack([feats(i) for i in tr]))
    res: dict = {"space": "cnn", "limit_rule": ood.limit_rule, "k": ood.k}
    res["pydicom_us_whole"] = _share([ood.ratio(feats(gray=g)) > 1 for _, g, _ in _pydicom()])
    for name, sel in (
        ("internal_test_mask", (df["split"] == "test").to_numpy() & is_busi),
        ("breast_mask", (df["cohort"] == "BrEaST").to_numpy()),
    ):
        res[name] = _share([ood.ratio(feats(i)) > 1 for i in np.flatnonzero(sel)])
    return res


def measure_demo_bundle(demo: Path, manifest: Path) -> dict:
    """Part 2: the demo bundle (brought up to date with an OOD model) on real images."""
    tmp = Path(tempfile.mkdtemp()) / "bundle"
    shutil.copytree(demo, tmp)
    split = Manifest.load(manifest)
    tr = split.df[split.df["split"] == "train"]
    b = Bundle.load(tmp)
    rows = np.flatnonzero((split.df["split"] == "train").to_numpy())
    feats, kept, frame = training_features(split, rows, b.pre.margin, whole=b.pre.roi == "whole")
    folds = split.df["cv_fold"].to_numpy()[rows][kept] if "cv_fold" in split.df else None
    spec = json.loads(
        (tmp / b.doc["models"]["deep"]["checkpoint"]).with_suffix(".json").read_text()
    )
    add_ood(tmp, feats, training_from_rows(tr, [], spec), folds, SPACE, frame_features=frame)
    b = Bundle.load(tmp)
    out: dict = {"bundle": str(demo), "training": b.training_text, "results": []}
    images = [
        (f"BUSI {lab} ({i})", *read_image(BUSI / lab / f"{lab} ({i}).png"))
        for lab in ("benign", "malignant", "normal")
        for i in range(1, 11)
    ]
    images += [(n, g, meta) for n, g, meta in _pydicom()]
    for name, g, meta in images:
        p = with_image_checks(b.predict(g, heatmap=False), meta)
        out["results"].append(
            {
                "image": name,
                "banner": bool(p.banner),
                "withheld": p.withheld,
                "ood_ratio": round(float(p.ood_ratio), 3),
                "cautions": p.cautions,
                "unmarked": not (p.banner and (p.withheld or p.cautions)),
            }
        )
    res = out["results"]
    out["unmarked_calls"] = sum(r["unmarked"] for r in res)
    out["withheld"] = sum(r["withheld"] for r in res)
    out["ood_flagged"] = sum(r["ood_ratio"] > 1 for r in res)
    out["no_lesion_found"] = sum(any("no lesion found" in c for c in r["cautions"]) for r in res)
    out["n"] = len(res)
    shutil.rmtree(tmp.parent)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--manifest", type=Path, required=True, help="the study's split manifest")
    ap.add_argument("--demo-bundle", type=Path)
    ap.add_argument("--demo-manifest", type=Path, help="the demo study's split manifest")
    ap.add_argument("-o", "--out", type=Path, default=Path("benchmarks/results/safety_ood.json"))
    a = ap.parse_args()
    doc = {
        "data": [
            "BUSI (Al-Dhabyani et al., Data in Brief 28:104863, 2020; CC0)",
            "BrEaST-Lesions_USG (Pawlowska et al., Sci Data 11:148, 2024; CC BY 4.0)",
            "pydicom's test files (ultrasound examples)",
        ],
        "busi_bundle": measure_busi_bundle(a.bundle, a.manifest),
        "busi_bundle_cnn_space": measure_cnn_space(a.bundle, a.manifest),
    }
    if a.demo_bundle is not None:
        doc["demo_bundle"] = measure_demo_bundle(a.demo_bundle, a.demo_manifest)
    atomic_write_json(a.out, doc)
    short = {
        k: {kk: vv for kk, vv in v.items() if kk != "ratios"}
        for k, v in doc["busi_bundle"].items()
        if isinstance(v, dict)
    }
    print(json.dumps(short, indent=1))


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main()
