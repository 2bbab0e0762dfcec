"""LiteMedSAM with its prompt encoder + mask decoder fine-tuned on cached embeddings, both directions.

Data, read in place from ``../shared/data``: BUSI (Al-Dhabyani et al., Data in
Brief 28:104863, 2020; CC0), benign + malignant, all of an image's masks united;
BrEaST-Lesions_USG (Pawlowska et al., Sci Data 11:148, 2024; TCIA DOI
10.7937/9WKK-Q141; CC BY 4.0), benign + malignant, tumour masks only. MedSAM's
training corpus may include BUSI, so BUSI numbers (zero-shot and after BrEaST
fine-tuning) may be in-sample for the base model.

Protocol per direction (``--train BUSI``: BUSI -> BrEaST; ``--train BrEaST``:
BrEaST -> BUSI), the recipe fixed in advance (:class:`FinetuneConfig` defaults):

1. Choice on the training cohort only: grouped 5-fold CV (BUSI groups: the
   audit's near-duplicate groups, :func:`buscad.data.audit.duplicates.near_duplicate_groups`,
   BUSI having no patient ids; BrEaST groups: the case id), folds stratified by
   benign/malignant. Per fold the decoder is fine-tuned on the other folds'
   lesions, exported to ONNX and run on the held-out lesions with the inference
   post-processing; the zero-shot decoder runs on the same lesions and boxes.
   Dice over all lesions (an empty outline scores 0) with the jittered box
   (each side moved by ``U(-0.1, 0.1)`` of the box's side, seeded per lesion)
   decides: the fine-tuned decoder is kept only if its CV Dice is higher.
2. Refit on the whole training cohort (stored by its ``decoder.onnx`` SHA-256
   with a JSON record) and evaluate once on the other cohort: expert box and
   jittered box, Dice ``2|A∩B| / (|A| + |B|)`` and IoU ``|A∩B| / |A∪B|`` over
   all lesions, with percentile-bootstrap 95 % CIs (1000 resamples over
   lesions, seeded), zero-shot beside it on the same boxes; the paired
   difference ``mean(Dice_ft - Dice_zs)`` with its bootstrap CI.

CPU time of every fine-tuning (process CPU seconds, 1 torch thread) and the load
average are recorded. Embeddings come from the on-disk cache
(``--cache``, key: image SHA-256 under the encoder graph's SHA-256); missing
ones are computed.

Example::

    nice -n 10 python benchmarks/segment_finetune.py --train BUSI \\
        --out benchmarks/results/segment_finetune_busi.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from buscad.segment.medsam import default_cache as medsam_cache
from buscad.utils import atomic_write_json, cache_root

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))

OTHER = {"BUSI": "BrEaST", "BrEaST": "BUSI"}


def groups_of(items: list[dict], cohort: str) -> np.ndarray:
    """Leakage group per lesion: BUSI near-duplicate groups (audit), BrEaST case ids."""
    from deep_cv import build_manifest

    from buscad.data.groups import split_groups

    m = build_manifest(DATA)
    m = m.subset(m.df["cohort"] == cohort)
    if cohort == "BUSI":
        from buscad.data.audit.duplicates import near_duplicate_groups

        g = split_groups(m, near_duplicate_groups(m))
    else:  # one image per case
        g = m.df["patient_id"]
    by_id = dict(zip(m.df["image_id"], g.astype(str), strict=True))
    return np.array([by_id[it["image_id"]] for it in items])


def labels_of(items: list[dict]) -> np.ndarray:
    """1 = malignant per lesion (for the stratified folds)."""
    from deep_cv import build_manifest

    m = build_manifest(DATA)
    lab = dict(zip(m.df["image_id"], m.df["label"] == "malignant", strict=True))
    return np.array([int(lab[it["image_id"]]) for it in items])


def prepare(sam, items: list[dict], cache: str, seed: int, jitter: float) -> None:
    """Add the embedding path, the expert box and the jittered box (seeded per lesion) to each item."""
    from segment_medsam import jitter as jitter_fn

    from buscad.segment.base import mask_box
    from buscad.segment.medsam import image_key

    for k, it in enumerate(items):
        sam.embed_cached(it["gray"], cache)  # fills a missing entry
        it["emb_path"] = Path(cache) / sam.model_hash[:12] / f"{image_key(it['gray'])}.npy"
        box = mask_box(it["mask"])
        rng = np.random.default_rng([seed, k])
        it["boxes"] = {"box": box, "jitter": jitter_fn(box, jitter, rng, it["gray"].shape)}


def embedding(it: dict):
    """The item's cached :class:`~buscad.segment.medsam.Embedding` (float32)."""
    from buscad.segment.medsam import Embedding, resized_size

    shape = it["gray"].shape
    return Embedding(np.load(it["emb_path"]).astype(np.float32), resized_size(shape), shape)


def evaluate(sam, items: list[dict]) -> dict[str, np.ndarray]:
    """Per prompt: ``(n, 3)`` Dice, IoU, found of every lesion with this decoder."""
    from buscad.segment.medsam_finetune import outline_dice

    out: dict[str, list] = {"box": [], "jitter": []}
    for it in items:
        emb = embedding(it)
        for prompt, b in it["boxes"].items():
            out[prompt].append(outline_dice(sam, emb, it["mask"], b))
    return {k: np.asarray(v, float) for k, v in out.items()}


def summary(v: np.ndarray, n_boot: int, seed: int) -> dict:
    """Dice and IoU over all lesions (empty outline = 0) with percentile-bootstrap 95 % CIs."""
    from buscad.segment.evaluate import bootstrap_ci

    return {
        "n_lesions": len(v),
        "n_found": int(v[:, 2].sum()),
        "dice_all": [float(x) for x in bootstrap_ci(v[:, 0], np.mean, n_boot, seed)],
        "iou_all": [float(x) for x in bootstrap_ci(v[:, 1], np.mean, n_boot, seed)],
    }


def paired(ft: np.ndarray, zs: np.ndarray, n_boot: int, seed: int) -> list[float]:
    """``mean(Dice_ft - Dice_zs)`` over lesions with its percentile-bootstrap 95 % CI."""
    from buscad.segment.evaluate import bootstrap_ci

    return [float(x) for x in bootstrap_ci(ft[:, 0] - zs[:, 0], np.mean, n_boot, seed)]


def train_items(items: list[dict]) -> list:
    """:class:`TrainItem` of each lesion (embedding kept as float16)."""
    from buscad.segment.medsam_finetune import TrainItem

    return [TrainItem.from_mask(embedding(it), it["mask"]) for it in items]


def medsam_of(folder: Path, threads: int):
    from buscad.segment.medsam import MedSAM

    return MedSAM(folder, threads=threads, cache_size=0)


def cv_record(cv: dict, train_c: str) -> dict:
    """The CV result as recorded in a fine-tuned folder's ``finetune.cv``."""
    if "partial" in cv:
        return {
            "groups": "audit near-duplicate groups" if train_c == "BUSI" else "case id",
            **cv["partial"],
            "decision": cv["decision"],
        }
    return {
        "folds": len(cv["folds"]),
        "groups": "audit near-duplicate groups" if train_c == "BUSI" else "case id",
        "dice_jitter_zero_shot": cv["jitter"]["zero_shot"]["dice_all"][0],
        "dice_jitter_finetuned": cv["jitter"]["finetuned"]["dice_all"][0],
        "dice_box_zero_shot": cv["box"]["zero_shot"]["dice_all"][0],
        "dice_box_finetuned": cv["box"]["finetuned"]["dice_all"][0],
        "decision": cv["decision"],
    }


def combine(paths: list[str], out: str, extra: list[str]) -> None:
    """One results file from the per-direction files (``train_cohort -> result``) and extra sections."""
    import json

    doc: dict = {
        "benchmark": "LiteMedSAM decoder fine-tuning on cached embeddings (both directions)",
        "datasets": {
            "BUSI": "Al-Dhabyani et al., Data in Brief 28:104863, 2020 (CC0)",
            "BrEaST": "Pawlowska et al., Sci Data 11:148, 2024; TCIA DOI 10.7937/9WKK-Q141 "
            "(CC BY 4.0)",
        },
        "note": "MedSAM's training corpus may include BUSI: BUSI numbers may be in-sample for "
        "the base model.",
        "directions": {},
    }
    for p in paths:  # a direction's CV run and its --refit-only run are merged
        r = json.loads(Path(p).read_text())
        key = f"{r['train_cohort']}->{r['test_cohort']}"
        d = doc["directions"].setdefault(key, {"files": []})
        d["files"].append({"file": p, "command": r.get("command")})
        d.update({k: v for k, v in r.items() if v is not None and k != "command"})
    for d in doc["directions"].values():
        cv = d.get("cv")
        if cv and "decision" not in cv:  # a CV run stopped early: its finished folds only
            f = cv["folds"]
            n = np.array([x["n_held_out"] for x in f], float)
            zs = float(np.dot(n, [x["dice_jitter_zero_shot"] for x in f]) / n.sum())
            ft = float(np.dot(n, [x["dice_jitter_finetuned"] for x in f]) / n.sum())
            cv["partial"] = {
                "folds_done": len(f),
                "n_held_out": int(n.sum()),
                "dice_jitter_zero_shot": zs,
                "dice_jitter_finetuned": ft,
                "note": "the run was stopped for time: Dice over the held-out lesions of the "
                "finished folds only (no bootstrap CI)",
            }
            cv["decision"] = "fine-tuned" if ft > zs else "zero-shot"
        if "cv" in d and "refit" in d and not d["refit"]["manifest"]["finetune"].get("cv"):
            from buscad.segment.medsam import read_manifest, write_manifest

            folder = Path(d["refit"]["folder"])
            m = read_manifest(folder)
            m["finetune"]["cv"] = cv_record(d["cv"], d["train_cohort"])
            write_manifest(
                folder, {k: v for k, v in m.items() if k not in ("format", "version", "sha256")}
            )
            d["refit"]["manifest"] = read_manifest(folder)
        if "cv" in d and "external" in d:
            d["external"]["used"] = d["cv"]["decision"]
    for kv in extra:
        name, p = kv.split("=", 1)
        doc[name] = json.loads(Path(p).read_text())
    atomic_write_json(out, doc)


def run_cv(zs, base, tr: list[dict], train_c: str, cfg, args, result: dict, save) -> dict:
    """Grouped, stratified k-fold CV of zero-shot vs fine-tuned on the training cohort (module doc)."""
    from sklearn.model_selection import StratifiedGroupKFold

    from buscad.segment.medsam_finetune import finetune, save_finetuned

    groups, labels = groups_of(tr, train_c), labels_of(tr)
    folds = np.zeros(len(tr), int)
    sgk = StratifiedGroupKFold(n_splits=args.folds, shuffle=True, random_state=args.seed)
    for k, (_, te) in enumerate(sgk.split(np.zeros(len(tr)), labels, groups)):
        folds[te] = k
    ev_zs = evaluate(zs, tr)
    ev_ft = {p: np.zeros_like(v) for p, v in ev_zs.items()}
    cv: dict = {"n_groups": len(set(groups)), "folds": []}
    fold_root = cache_root() / "litemedsam" / "finetune_cv"
    for k in range(args.folds):
        fit = [i for i in range(len(tr)) if folds[i] != k]
        held = [i for i in range(len(tr)) if folds[i] == k]
        module, hist = finetune(train_items([tr[i] for i in fit]), base, cfg, log=print)
        folder = save_finetuned(module, base, fold_root / f"{train_c}{args.fold_tag}_fold{k}")
        ev = evaluate(medsam_of(folder, args.threads), [tr[i] for i in held])
        for p in ev:
            ev_ft[p][held] = ev[p]
        cv["folds"].append(
            {
                "fold": k,
                "n_train": len(fit),
                "n_held_out": len(held),
                "cpu_seconds": hist["cpu_seconds"],
                "wall_seconds": hist["wall_seconds"],
                "loss_first": hist["loss_first"],
                "loss_last": hist["loss_last"],
                "dice_jitter_zero_shot": float(ev_zs["jitter"][held, 0].mean()),
                "dice_jitter_finetuned": float(ev["jitter"][:, 0].mean()),
                "dice_box_zero_shot": float(ev_zs["box"][held, 0].mean()),
                "dice_box_finetuned": float(ev["box"][:, 0].mean()),
                "load_avg": os.getloadavg(),
            }
        )
        print(cv["folds"][-1], flush=True)
        result["cv"] = cv
        save()
    for p in ev_zs:
        cv[p] = {
            "zero_shot": summary(ev_zs[p], args.n_boot, args.seed),
            "finetuned": summary(ev_ft[p], args.n_boot, args.seed),
            "paired_dice_gain": paired(ev_ft[p], ev_zs[p], args.n_boot, args.seed),
        }
    keep = cv["jitter"]["finetuned"]["dice_all"][0] > cv["jitter"]["zero_shot"]["dice_all"][0]
    cv["decision"] = "fine-tuned" if keep else "zero-shot"
    result["cv"] = cv
    save()
    print("CV", {p: cv[p]["paired_dice_gain"] for p in ("box", "jitter")}, cv["decision"])
    return cv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--combine", nargs="*", help="Merge these per-direction files into --out.")
    ap.add_argument("--extra", nargs="*", default=[], help="NAME=file.json sections (--combine).")
    ap.add_argument("--train", choices=["BUSI", "BrEaST"])
    ap.add_argument("--cache", default=str(medsam_cache()))
    ap.add_argument("--out", required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jitter", type=float, default=0.10)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--boxes-per-image", type=int, default=2)
    ap.add_argument(
        "--train-jitter",
        type=float,
        nargs="*",
        default=[0.05, 0.1],
        help="FinetuneConfig.jitter: maximum side jitter of the training boxes, cycled "
        "(results before session 9 used 0.1 0.2).",
    )
    ap.add_argument("--fold-tag", default="", help="Suffix of the CV fold folders in the cache.")
    ap.add_argument("--refit-only", action="store_true", help="Skip the CV (run separately).")
    ap.add_argument("--limit", type=int, default=0, help="First N lesions per cohort (smoke runs).")
    args = ap.parse_args()
    if args.combine:
        combine(args.combine, args.out, args.extra)
        return
    if not args.train:
        ap.error("--train is required")

    import torch
    from segment_medsam import load_lesions

    from buscad.segment.medsam_convert import ensure_converted
    from buscad.segment.medsam_finetune import (
        FinetuneConfig,
        finetune,
        store_finetuned,
        training_record,
    )

    torch.set_num_threads(args.threads)
    base = ensure_converted()
    zs = medsam_of(base, args.threads)
    train_c, test_c = args.train, OTHER[args.train]
    cfg = FinetuneConfig(
        epochs=args.epochs,
        boxes_per_image=args.boxes_per_image,
        jitter=tuple(args.train_jitter),
        seed=args.seed,
    )
    result: dict = {
        "benchmark": "LiteMedSAM decoder fine-tuning on cached embeddings",
        "command": " ".join(sys.argv),
        "train_cohort": train_c,
        "test_cohort": test_c,
        "config": cfg.to_dict(),
        "base_manifest": zs.manifest,
        "note": "MedSAM's training corpus may include BUSI: BUSI numbers may be in-sample for "
        "the base model. Choice on the training cohort's grouped CV only; the other cohort "
        "is evaluated once.",
        "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg(),
    }

    def save() -> None:
        result["load_avg_now"] = os.getloadavg()
        atomic_write_json(args.out, result)

    t0 = time.perf_counter()
    items = {c: load_lesions(DATA, [c])[: args.limit or None] for c in (train_c, test_c)}
    prepare(zs, items[train_c], args.cache, args.seed, args.jitter)
    print(f"loaded {[len(v) for v in items.values()]} lesions {time.perf_counter() - t0:.0f} s")

    # 1. grouped CV on the training cohort (skipped with --refit-only: another run does it)
    tr = items[train_c]
    cv = None if args.refit_only else run_cv(zs, base, tr, train_c, cfg, args, result, save)

    # 2. refit on the whole training cohort, evaluate once on the other cohort
    module, hist = finetune(train_items(tr), base, cfg, log=print)
    record = training_record(
        cfg,
        hist,
        cohort=train_c,
        rows=len(tr),
        citation="BUSI: Al-Dhabyani et al., Data in Brief 28:104863, 2020 (CC0)"
        if train_c == "BUSI"
        else "BrEaST-Lesions_USG: Pawlowska et al., Sci Data 11:148, 2024 (CC BY 4.0)",
        cv=cv_record(cv, train_c) if cv else None,
    )
    folder = store_finetuned(module, base, record)
    from buscad.segment.medsam import read_manifest

    result["refit"] = {
        "folder": str(folder),
        "manifest": read_manifest(folder),
        "cpu_seconds": hist["cpu_seconds"],
        "wall_seconds": hist["wall_seconds"],
        "loss_first": hist["loss_first"],
        "loss_last": hist["loss_last"],
    }
    save()
    te = items[test_c]
    prepare(zs, te, args.cache, args.seed, args.jitter)  # embeddings looked up only now
    ext_zs, ext_ft = evaluate(zs, te), evaluate(medsam_of(folder, args.threads), te)
    result["external"] = {
        p: {
            "zero_shot": summary(ext_zs[p], args.n_boot, args.seed),
            "finetuned": summary(ext_ft[p], args.n_boot, args.seed),
            "paired_dice_gain": paired(ext_ft[p], ext_zs[p], args.n_boot, args.seed),
        }
        for p in ext_zs
    }
    result["external"]["used"] = cv["decision"] if cv else "see the CV run"
    result["seconds"] = time.perf_counter() - t0
    save()
    print("external", {p: result["external"][p]["paired_dice_gain"] for p in ("box", "jitter")})
    print("wrote", args.out)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
