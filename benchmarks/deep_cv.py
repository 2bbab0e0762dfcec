"""Grouped 5-fold CV of fine-tuned deep models on BUSI + BrEaST (benign vs malignant).

Data: BUSI (Al-Dhabyani et al., Data in Brief 28:104863, 2020) benign + malignant
(647 images) and BrEaST-Lesions_USG (Pawlowska et al., Sci Data 11:148, 2024)
benign + malignant (252 images), read from ``../shared/data`` (never copied).

Folds, one of:

- ``--audited-folds``: the audited folds (:func:`audited_folds`): ``buscad data
  import`` of both datasets, their benign/malignant rows pooled and audited
  (:func:`buscad.data.audit.run.run_audit`, seed 0), then ``buscad data split
  --method kfold --k 5 --seed 0`` (:func:`buscad.data.splits.assign_splits`:
  patient united with the audit's near-duplicate groups, stratified by label);
  ``--folds-only`` writes them and stops;
- ``--manifest M`` whose ``fold`` column (0-4) or ``split`` column (``fold0`` ..
  ``fold4``, as ``buscad data split`` writes) defines them;
- otherwise built here: groups = patient (BrEaST: one per case; BUSI has no ids)
  united with a near-duplicate proxy (lesion-box crops at 16x16 px whose Pearson
  correlation is >= 0.95, mask-box aspect ratios within 15%, linked
  transitively), then ``StratifiedGroupKFold(5, shuffle=True, random_state=0)``.

The folds used are written to ``--folds-out`` (``benchmarks/results/deep_cv_folds.csv``:
``image_id, cohort, label, fold``; file names only, no pixels) and their SHA-256 goes
in the JSON, with the command line and each model's fine-tuning mode
(``fine_tuning``), so a results file says what was run.

Models (the default is sized to a shared 2-core CPU, where a full fine-tune of
efficientnet_lite0 costs ~50 s per batch of 32 under load, because PyTorch's CPU
backward of depthwise convolutions is slow; ``--full`` trains every layer):

- ``efficientnet_lite0``: genuine ImageNet weights (the package file), by default
  *partial* fine-tuning: stem + blocks 0-5 frozen (their outputs for the ROI crop and its
  flip cached once, shared by the folds), blocks 5-6 + conv_head + the studies'
  head trained (:func:`train_partial`); 224 px ROI crops (mask box + 10%).
- ``rcdnet``: from scratch with the generic trainer
  (:func:`buscad.models.train.train_model`, seeded augmentations), 128 px.

Per fold and model: train on four folds (early stopping on a 15% group hold-out
of them), score the held-out fold; threshold = Youden's J on the training
folds' scores. Reported: AUC with DeLong 95% CI per fold and on the pooled
out-of-fold scores, plus accuracy/sensitivity/specificity at the training
threshold. Resumable: each (model, fold) is skipped when its predictions exist;
the trainer resumes mid-fold from its ``last.*`` state. The JSON is rewritten
after every fold (``"complete": false`` until all folds of all models ran).

Example (the command of ``results/deep_cv.json``'s protocol: every layer fine-tuned,
224 px, audited folds)::

    nice -n 10 python benchmarks/deep_cv.py --threads 2 --full --input-size 224 \
        --audited-folds --work /tmp/buscad_deep_cv --out benchmarks/results/deep_cv.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

import buscad._compat  # noqa: F401
from buscad.data.io import read_image, read_mask
from buscad.data.manifest import Manifest
from buscad.evaluate.delong import auc_ci
from buscad.evaluate.metrics import binary_metrics, youden_threshold
from buscad.models.preprocess import resize, roi_box
from buscad.models.train import TrainConfig, load_crops, predict_crops, train_model
from buscad.utils import atomic_write_json, atomic_write_table

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

MODELS = {
    "efficientnet_lite0": dict(
        backbone="efficientnet_lite0",
        pretrained="imagenet",
        epochs=10,
        batch_size=32,
        lr=5e-4,
        warmup_epochs=1.0,
        patience=3,
        input_size=224,
    ),
    "rcdnet": dict(
        backbone="rcdnet",
        pretrained=None,
        epochs=8,
        batch_size=32,
        lr=2e-3,
        warmup_epochs=1.0,
        patience=3,
        input_size=128,
    ),
}
#: efficientnet_lite0 is fine-tuned from block 5 on ("partial"): see train_partial.
PARTIAL = {"efficientnet_lite0": 6}


def busi_normal_rows(data: Path) -> list[dict]:
    """Manifest rows of BUSI's normal images (no lesion, no mask), in file-name order."""
    folder = data / "BUSI" / "Dataset_BUSI_with_GT" / "normal"
    return [
        dict(
            image_id=f"busi/{p.stem}",
            image_path=str(p),
            mask_path="",
            label="normal",
            patient_id=f"busi/{p.stem}",
            cohort="BUSI",
        )
        for p in sorted(folder.glob("*.png"))
        if "_mask" not in p.stem
    ]


def build_manifest(data: Path) -> Manifest:
    """BUSI + BrEaST benign/malignant rows with absolute paths."""
    rows = []
    busi = data / "BUSI" / "Dataset_BUSI_with_GT"
    for label in ("benign", "malignant"):
        for img in sorted((busi / label).glob("*.png")):
            if "_mask" in img.stem:
                continue
            masks = sorted(busi.joinpath(label).glob(f"{img.stem}_mask*.png"))
            rows.append(
                dict(
                    image_id=f"busi/{img.stem}",
                    image_path=str(img),
                    mask_path=";".join(str(m) for m in masks),
                    label=label,
                    patient_id=f"busi/{img.stem}",
                    cohort="BUSI",
                )
            )
    br = data / "BrEaST-Lesions_USG"
    clin = pd.read_csv(br / "BrEaST-Lesions-USG-clinical-data-Dec-15-2023.csv")
    d = br / "BrEaST-Lesions_USG-images_and_masks"
    for r in clin.itertuples():
        if r.Classification not in ("benign", "malignant"):
            continue
        rows.append(
            dict(
                image_id=f"breast/{Path(r.Image_filename).stem}",
                image_path=str(d / r.Image_filename),
                mask_path=str(d / r.Mask_tumor_filename),
                label=r.Classification,
                patient_id=f"breast/{r.CaseID}",
                cohort="BrEaST",
            )
        )
    return Manifest(pd.DataFrame(rows), root=REPO)


def near_duplicate_groups(m: Manifest, thr: float = 0.95) -> np.ndarray:
    """Group ids: patient_id united with near-duplicate lesion crops (see module doc)."""
    n = len(m)
    vecs, aspect = np.zeros((n, 256)), np.zeros(n)
    for i in range(n):
        g, _ = read_image(m.image_path(i))
        mask = read_mask(m.mask_paths(i), g.shape)
        y0, y1, x0, x1 = roi_box(mask, 0.0)
        v = resize(g[y0:y1, x0:x1].astype(np.uint8), 16).astype(float).ravel()
        v -= v.mean()
        vecs[i] = v / (np.linalg.norm(v) + 1e-9)
        aspect[i] = (y1 - y0) / max(1, x1 - x0)
    corr = vecs @ vecs.T
    close = np.abs(np.log(aspect[:, None] / aspect[None, :])) < np.log(1.15)
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    pid = m.df["patient_id"].astype(str).to_numpy()
    first: dict[str, int] = {}
    for i, p in enumerate(pid):
        if p in first:
            parent[find(i)] = find(first[p])
        else:
            first[p] = i
    ii, jj = np.nonzero(np.triu((corr >= thr) & close, 1))
    for a, b in zip(ii, jj, strict=True):
        parent[find(a)] = find(b)
    return np.array([find(i) for i in range(n)])


def make_folds(m: Manifest, seed: int = 0) -> np.ndarray:
    """Fold 0-4 per row from the manifest's fold/split column, or grouped stratified folds."""
    df = m.df
    if "fold" in df.columns:
        return df["fold"].astype(int).to_numpy()
    if "split" in df.columns and df["split"].astype(str).str.startswith("fold").all():
        return df["split"].astype(str).str[4:].astype(int).to_numpy()
    from sklearn.model_selection import StratifiedGroupKFold

    groups = near_duplicate_groups(m)
    folds = np.zeros(len(m), int)
    cv = StratifiedGroupKFold(5, shuffle=True, random_state=seed)
    for k, (_, te) in enumerate(cv.split(np.zeros(len(m)), m.y, groups)):
        folds[te] = k
    return folds


def audited_folds(data: Path, work: Path, seed: int = 0) -> Manifest:
    """The audited folds: import, pool, audit and split BUSI + BrEaST lesions (see module doc).

    Returns the pooled benign/malignant rows with a ``fold`` column (0-4); the
    imports, the audit's tables and ``folds.csv`` stay in ``work / "audited"``.
    """
    from buscad.data.audit.run import run_audit
    from buscad.data.importers.registry import import_dataset
    from buscad.data.manifest import concat
    from buscad.data.splits import assign_splits

    folder = work / "audited"
    folder.mkdir(parents=True, exist_ok=True)
    sources = {
        "BUSI": ("busi", data / "BUSI" / "Dataset_BUSI_with_GT"),
        "BrEaST": ("breast-lesions-usg", data / "BrEaST-Lesions_USG"),
    }
    mans = []
    for name, (fmt, src) in sources.items():
        if not src.is_dir():
            raise SystemExit(f"{src}: dataset not found (see ../shared/data/README.md)")
        path = folder / f"{name.lower()}.csv"
        import_dataset(fmt, src, path, progress=False)
        mans.append(Manifest.load(path).lesions().with_columns(cohort=name))
    pooled = concat(mans, root=folder)
    res = run_audit(pooled, folder / "audit", seed=seed, cache_dir=work / "cache", report=False)
    split = assign_splits(res.manifest, method="kfold", k=5, seed=seed)
    folds = split.df["split"].astype(str).str[4:].astype(int).to_numpy()
    out = res.manifest.with_columns(fold=folds)
    out.save(folder / "folds.csv")
    return out


def folds_table(m: Manifest) -> pd.DataFrame:
    """``image_id, cohort, label, fold`` of every row (what ``--folds-out`` holds)."""
    cols = [c for c in ("image_id", "cohort", "label", "fold") if c in m.df.columns]
    return m.df[cols].reset_index(drop=True)


def table_sha256(t: pd.DataFrame) -> str:
    """SHA-256 of a table's CSV text (``index=False``, ``\\n`` line ends)."""
    return hashlib.sha256(t.to_csv(index=False, lineterminator="\n").encode()).hexdigest()


def summarise(y: np.ndarray, s: np.ndarray, thr: float | None = None) -> dict:
    a = auc_ci(y, s)
    out = {"n": len(y), "n_malignant": int(y.sum()), "auc": a.auc, "auc_ci": [a.lo, a.hi]}
    if thr is not None:
        b = binary_metrics(y, s, thr)
        out.update(
            threshold=thr,
            accuracy=b.accuracy,
            sensitivity=b.sensitivity,
            specificity=b.specificity,
            precision=b.ppv,
            f1=b.f1,
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--manifest", type=Path, help="Manifest with a fold (0-4) or split (foldK) column."
    )
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--models", default="efficientnet_lite0,rcdnet")
    ap.add_argument("--folds", default="0,1,2,3,4")
    ap.add_argument("--work", type=Path, default=Path("/tmp/buscad_deep_cv"))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "deep_cv.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--full",
        action="store_true",
        help="Fine-tune every layer (no frozen efficientnet_lite0 blocks): the issue's protocol "
        "when the machine is fast enough (see the module docstring); use a fresh --work folder, "
        "since finished folds there are reused.",
    )
    ap.add_argument(
        "--input-size", type=int, default=None, help="Override every model's input size."
    )
    ap.add_argument(
        "--audited-folds",
        action="store_true",
        help="Build the audited folds (import, pooled audit, buscad data split kfold, seed 0).",
    )
    ap.add_argument(
        "--folds-only", action="store_true", help="Write the folds to --folds-out and stop."
    )
    ap.add_argument(
        "--folds-out", type=Path, default=REPO / "benchmarks" / "results" / "deep_cv_folds.csv"
    )
    args = ap.parse_args()
    if args.full:
        PARTIAL.clear()
    if args.input_size:
        for cfg in MODELS.values():
            cfg["input_size"] = args.input_size
    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    man_file = args.work / "manifest.csv"
    if args.audited_folds:
        m = audited_folds(args.data, args.work)
        folds = m.df["fold"].to_numpy()
    elif args.manifest:
        m = Manifest.load(args.manifest).lesions()
        folds = make_folds(m)
        m = m.with_columns(fold=folds)
    elif man_file.is_file():
        m = Manifest.load(man_file)
        folds = m.df["fold"].to_numpy()
    else:
        t = time.time()
        m = build_manifest(args.data)
        folds = make_folds(m)
        m = m.with_columns(fold=folds)
        m.save(man_file)
        print(f"manifest + grouped folds built in {time.time() - t:.0f} s", flush=True)
    table = folds_table(m)
    atomic_write_table(table, args.folds_out)
    print(f"folds: {np.bincount(folds).tolist()} rows -> {args.folds_out}", flush=True)
    if args.folds_only:
        return
    y = m.y
    models = [s.strip() for s in args.models.split(",") if s.strip()]
    fold_list = [int(f) for f in args.folds.split(",")]
    result: dict = {
        "protocol": "BUSI + BrEaST-Lesions_USG benign/malignant, grouped stratified 5-fold CV",
        "data": {
            "n": len(m),
            "n_malignant": int(y.sum()),
            "by_cohort": m.df.groupby("cohort")["label"].value_counts().unstack().to_dict("index"),
        },
        "citations": [
            "Al-Dhabyani et al., Data in Brief 28:104863 (2020)",
            "Pawlowska et al., Sci Data 11:148 (2024)",
        ],
        "command": " ".join(["benchmarks/deep_cv.py", *sys.argv[1:]]),
        "folds_from": "audited folds (import, pooled audit, buscad data split kfold, seed 0)"
        if args.audited_folds
        else str(args.manifest)
        if args.manifest
        else "near-duplicate proxy + patient groups",
        "folds_file": str(args.folds_out.relative_to(REPO))
        if args.folds_out.is_relative_to(REPO)
        else str(args.folds_out),
        "folds_sha256": table_sha256(table),
        "fold_sizes": np.bincount(folds).tolist(),
        "fine_tuning": {
            name: (
                f"partial: blocks[{PARTIAL[name]}:] + conv_head + head trained, "
                "earlier layers frozen ImageNet"
                if name in PARTIAL
                else "full: every layer trained"
            )
            for name in models
        },
        "models": {},
    }
    for name in models:
        cfg = TrainConfig(
            **MODELS[name],
            seed=0,
            progress=False,
            num_threads=args.threads,
        )
        result["models"][name] = {"config": asdict(cfg), "folds": {}}
    complete = True
    cache = None
    for name in models:  # all folds of one model, then the next
        for k in fold_list:
            wd = args.work / name / f"fold{k}"
            pred_f = wd / "oof.csv"
            cfg = TrainConfig(
                **MODELS[name],
                seed=0,
                progress=True,
                num_threads=args.threads,
            )
            if not pred_f.is_file():
                t = time.time()
                tr_rows = np.flatnonzero(folds != k)
                te_rows = np.flatnonzero(folds == k)
                sub = m.with_columns(split=np.where(folds == k, "test", "train"))
                if name in PARTIAL:
                    cache = cache or FrozenCache(m, cfg, PARTIAL[name], args.work)
                    res = train_partial(sub, cfg, cache, wd)
                    s = res.scores
                else:
                    res = train_model(sub, cfg, wd)
                    crops, keep, _ = load_crops(sub, res.preprocessor)
                    s = np.full(len(m), np.nan)
                    s[keep] = predict_crops(res.model, crops, res.preprocessor, 32)
                thr = youden_threshold(y[tr_rows], s[tr_rows])
                atomic_write_table(
                    pd.DataFrame(
                        {
                            "image_id": m.df["image_id"].to_numpy()[te_rows],
                            "y": y[te_rows],
                            "score": s[te_rows],
                            "cohort": m.df["cohort"].to_numpy()[te_rows],
                            "threshold": thr,
                        }
                    ),
                    pred_f,
                )
                atomic_write_json(
                    wd / "fold.json",
                    {
                        "seconds": time.time() - t,
                        "best_epoch": res.best_epoch,
                        "epochs_run": len(res.history),
                        "train_auc": summarise(y[tr_rows], s[tr_rows]),
                    },
                )
            p = pd.read_csv(pred_f)
            info = json.loads((wd / "fold.json").read_text())
            result["models"][name]["folds"][str(k)] = {
                **summarise(p["y"].to_numpy(), p["score"].to_numpy(), float(p["threshold"].iat[0])),
                **info,
            }
            _pool(result, args.work, name, fold_list)
            result["complete"] = False
            atomic_write_json(args.out, result)
            print(
                f"{name} fold {k}: AUC {result['models'][name]['folds'][str(k)]['auc']:.4f}",
                flush=True,
            )
    result["complete"] = complete and fold_list == [0, 1, 2, 3, 4]
    if result["complete"] and len(models) >= 2:
        result["comparison"] = _compare(args.work, models)
    atomic_write_json(args.out, result)


def _compare(work: Path, models: list[str]) -> dict:
    """Paired DeLong test of the first two models and their pre-specified mean (no tuning).

    The ensemble score of a case is the mean of the models' out-of-fold
    probabilities; its threshold is not reported (AUC only).
    """
    from buscad.evaluate.delong import delong_test

    oof = {
        m: pd.concat(
            [pd.read_csv(work / m / f"fold{k}" / "oof.csv") for k in range(5)], ignore_index=True
        ).set_index("image_id")
        for m in models
    }
    a, b = models[:2]
    j = oof[a].join(oof[b][["score"]].rename(columns={"score": "score_b"}))
    j = j.dropna(subset=["score", "score_b"])
    y = j["y"].to_numpy()
    t = delong_test(y, j["score"].to_numpy(), j["score_b"].to_numpy())
    mean = (j["score"] + j["score_b"]).to_numpy() / 2
    return {
        "models": [a, b],
        "n": len(j),
        "delong_auc_difference": float(t.diff),
        "delong_z": float(t.z),
        "delong_p": float(t.p),
        "mean_of_two": summarise(y, mean),
    }


class FrozenCache:
    """Outputs of efficientnet_lite0's frozen ImageNet layers (stem + blocks[:first]).

    Computed once for every image in two views (the ROI crop and its horizontal
    flip) and shared by all folds: the frozen layers never change, so only the
    top (blocks[first:], conv_head, bn2, head) is trained. Stored in ``work`` as
    safetensors so a restarted run does not recompute them.
    """

    def __init__(self, m: Manifest, cfg: TrainConfig, first: int, work: Path) -> None:
        import torch
        from safetensors.torch import load_file, save_file

        from buscad.models.registry import create_backbone

        self.cfg, self.first = cfg, first
        self.pre = cfg.preprocessor()
        self.model = create_backbone(cfg.backbone, pretrained=cfg.pretrained).eval()
        f = work / f"frozen_{cfg.backbone}_{first}_{self.pre.input_size}.safetensors"
        if f.is_file():
            d = load_file(str(f))
            self.views, self.keep = [d["view0"], d["view1"]], d["keep"].numpy()
            return
        t = time.time()
        crops, keep, skipped = load_crops(m, self.pre)
        for sk in skipped:
            print("skipped", sk, flush=True)
        bb = self.model.backbone
        self.views = []
        with torch.inference_mode():
            for flip in (False, True):
                outs = []
                for i in range(0, len(crops), 32):
                    x = self.pre(crops[i : i + 32])
                    if flip:
                        x = x.flip(-1)
                    h = bb.bn1(bb.conv_stem(x))
                    for blk in bb.blocks[:first]:
                        h = blk(h)
                    outs.append(h.clone())
                self.views.append(torch.cat(outs))
        self.keep = keep
        save_file(
            {"view0": self.views[0], "view1": self.views[1], "keep": torch.as_tensor(keep)}, str(f)
        )
        print(
            f"frozen features of {len(keep)} images x 2 views in {time.time() - t:.0f} s",
            flush=True,
        )


def _top(model, first: int):
    import torch
    from torch import nn

    bb = model.backbone

    class Top(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.Sequential(*bb.blocks[first:])
            self.conv_head, self.bn2, self.head = bb.conv_head, bb.bn2, model.head

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return self.head(self.bn2(self.conv_head(self.blocks(h))).mean((2, 3)))

    return Top()


def train_partial(sub: Manifest, cfg: TrainConfig, cache: FrozenCache, wd: Path):
    """Fine-tune the top of efficientnet_lite0 on cached frozen features (one fold).

    Same recipe as :func:`buscad.models.train.train_model` (AdamW, warm-up + cosine,
    class-balanced CE, early stopping on a 15% group hold-out's AUC, seed), with a
    random view (crop or its flip) per sample and epoch as augmentation. Writes the
    full model (frozen layers + trained top) as a normal buscad checkpoint.
    """
    import copy
    import math
    from types import SimpleNamespace

    import torch
    from torch import nn

    from buscad.evaluate.delong import roc_auc
    from buscad.models.checkpoint import save_checkpoint
    from buscad.models.registry import create_backbone
    from buscad.models.train import _lr_lambda, split_train_val

    torch.manual_seed(cfg.seed)
    model = create_backbone(cfg.backbone, pretrained=cfg.pretrained, dropout=cfg.dropout)
    top = _top(model, cache.first)
    tr_idx, va_idx = split_train_val(sub, cfg.val_fraction, cfg.seed)
    pos = {int(k): j for j, k in enumerate(cache.keep)}
    tr = np.array([pos[i] for i in tr_idx if int(i) in pos])
    va = np.array([pos[i] for i in va_idx if int(i) in pos])
    y_all = sub.y[cache.keep]
    counts = np.bincount(y_all[tr], minlength=2).astype(float)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(len(tr) / (2 * counts), dtype=torch.float32))
    opt = torch.optim.AdamW(top.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    spe = math.ceil(len(tr) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(spe * cfg.epochs, int(cfg.warmup_epochs * spe), cfg.min_lr_ratio)
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    v0, v1 = cache.views

    def scores(idx: np.ndarray) -> np.ndarray:
        top.eval()
        with torch.inference_mode():
            return np.concatenate(
                [
                    torch.softmax(top(v0[idx[i : i + 64]]), 1)[:, 1].numpy()
                    for i in range(0, len(idx), 64)
                ]
            )

    hist, best, best_state, bad = [], -1.0, None, 0
    for ep in range(cfg.epochs):
        top.train()
        t0 = time.time()
        perm = tr[torch.randperm(len(tr), generator=gen).numpy()]
        flips = torch.rand(len(perm), generator=gen) < 0.5
        losses = []
        for b in range(0, len(perm), cfg.batch_size):
            idx = perm[b : b + cfg.batch_size]
            if len(idx) < 2:
                continue
            f = flips[b : b + cfg.batch_size]
            h = torch.where(f.view(-1, 1, 1, 1), v1[idx], v0[idx])
            loss = loss_fn(top(h), torch.as_tensor(y_all[idx], dtype=torch.long))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss))
        auc = roc_auc(y_all[va], scores(va))
        hist.append(
            {
                "epoch": ep + 1,
                "train_loss": float(np.mean(losses)),
                "val_auc": auc,
                "seconds": time.time() - t0,
            }
        )
        print(
            f"  lite0 partial epoch {ep + 1}: loss {hist[-1]['train_loss']:.4f} val AUC {auc:.4f} "
            f"({hist[-1]['seconds']:.0f} s)",
            flush=True,
        )
        if auc > best:
            best, bad = auc, 0
            best_state = copy.deepcopy(top.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    top.load_state_dict(best_state)
    model.eval()
    all_scores = np.full(len(sub), np.nan)
    all_scores[cache.keep] = scores(np.arange(len(cache.keep)))
    wd.mkdir(parents=True, exist_ok=True)
    atomic_write_table(pd.DataFrame(hist), wd / "metrics.csv")
    save_checkpoint(
        model,
        wd / "model",
        {
            "provenance": {
                "training": {
                    "config": asdict(cfg),
                    "mode": f"partial: blocks[{cache.first}:] "
                    "+ conv_head + head trained, earlier layers frozen ImageNet",
                    "val_auc": best,
                }
            }
        },
        preprocessor=cache.pre,
    )
    best_epoch = int(np.argmax([h["val_auc"] for h in hist])) + 1
    return SimpleNamespace(scores=all_scores, best_epoch=best_epoch, history=pd.DataFrame(hist))


def _pool(result: dict, work: Path, name: str, fold_list: list[int]) -> None:
    parts = [
        pd.read_csv(work / name / f"fold{k}" / "oof.csv")
        for k in fold_list
        if (work / name / f"fold{k}" / "oof.csv").is_file()
    ]
    if not parts:
        return
    p = pd.concat(parts, ignore_index=True)
    ok = p["score"].notna()
    p = p[ok]
    # threshold metrics pooled over folds: each case judged at its own fold's training threshold
    pred = (p["score"] >= p["threshold"]).astype(int)
    y = p["y"].to_numpy()
    pooled = summarise(y, p["score"].to_numpy())
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    pooled.update(
        accuracy=(tp + tn) / len(y),
        sensitivity=tp / max(1, y.sum()),
        specificity=tn / max(1, (1 - y).sum()),
        folds_done=sorted(int(k) for k in result["models"][name]["folds"]),
    )
    pooled["by_cohort"] = {
        c: summarise(g["y"].to_numpy(), g["score"].to_numpy())
        for c, g in p.groupby("cohort")
        if g["y"].nunique() == 2
    }
    result["models"][name]["pooled"] = pooled


if __name__ == "__main__":
    main()
