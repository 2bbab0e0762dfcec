"""Choosing the lesion detector's head, proposals and score features on BUSI only (no BrEaST).

Data: BUSI (Al-Dhabyani et al., Data in Brief 28:104863, 2020; CC0), 647 lesion + 133 normal
images, LiteMedSAM embeddings from the on-disk cache. Grouped 3-fold CV (the audit's
near-duplicate groups, stratified by label, seed 0; the folds of ``segment_auto.py``).

Two steps:

``heads``: per head setting (:data:`HEADS`), each fold's head is trained on the other two folds
and its out-of-fold heat-maps are cached (``<cache>/detector/select/<name>.npy``).

``eval``: per (head, proposal setting, score features) (:data:`PROPOSALS`, :data:`RULES`), the
out-of-fold heat-maps are outlined by LiteMedSAM (every decoded box memoised per image) and
scored by a score rule that is itself cross-validated: for each fold, the rule (weights and
threshold, :func:`buscad.segment.detector_train.choose_rule`) is fitted on the other folds'
out-of-fold proposals and applied to the fold. Reported per setting over all 780 images:
found share (lesions matched at mask IoU >= 0.5 / lesions), false candidates per image, Dice
``2 |A ∩ B| / (|A| + |B|)`` of the top candidate with the expert mask over all lesion images (0
without a candidate), normals with no candidate / normals, and the pre-rule proposal recall
(lesions with any proposal at IoU >= 0.5 / lesions). The first setting's lesions are also split
by cause of a miss (``diagnose``). Every row goes to ``benchmarks/results/segment_auto_select.json``.

Run: ``nice -n 10 python benchmarks/segment_auto_select.py heads`` then ``... eval``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "segment_auto_select.json"

#: name -> (DetectorConfig keywords of the head, epochs).
HEADS = {
    "c32_e30": ({"channels": 32}, 30),
    "c32_e30_norm": ({"channels": 32, "normalize": True}, 30),
}

#: name -> DetectorConfig keywords of the proposals.
PROPOSALS = {
    "abs": {"heat_thresholds": [0.5, 0.9]},
    "abs+ratio": {"heat_thresholds": [0.5, 0.9], "heat_ratios": [0.3, 0.5, 0.7]},
    "abs+ratio_m8": {
        "heat_thresholds": [0.5, 0.9],
        "heat_ratios": [0.3, 0.5, 0.7],
        "max_components": 8,
    },
}

V1 = ["logit_heat_max", "logit_heat_mean", "iou_head", "log_area"]
ALL = [*V1, "heat_ratio", "logit_heat_in", "heat_contrast", "compactness", "box_fill"]
# no absolute heat level: robust to a cohort whose heat-map is calibrated lower
RELATIVE = ["iou_head", "log_area", "heat_ratio", "heat_contrast", "compactness", "box_fill"]
#: Threshold bounds of the "@b" rules (set from the targets, false <= 0.3 and normals >= 0.8,
#: with a margin, before any of these rows was seen).
BUDGET = {"max_false": 0.2, "min_specificity": 0.85}
#: name -> (score features, threshold bounds; empty: max found - false).
RULES = {
    "v1": (V1, {}),
    "v1+ratio": ([*V1, "heat_ratio"], {}),
    "all": (ALL, {}),
    "relative": (RELATIVE, {}),
    "v1+ratio@b": ([*V1, "heat_ratio"], BUDGET),
    "all@b": (ALL, BUDGET),
    "relative@b": (RELATIVE, BUDGET),
}


def load(threads: int):
    from segment_auto import DATA, manifests

    from buscad.data.audit.duplicates import near_duplicate_groups
    from buscad.segment.detector_train import embed_manifest, grouped_folds
    from buscad.segment.medsam import MedSAM, default_cache, default_folder

    busi_m, _ = manifests(DATA)
    sam = MedSAM(default_folder(), threads=threads, cache_size=2)
    data = embed_manifest(busi_m, sam, default_cache())
    groups = near_duplicate_groups(busi_m).to_numpy()
    folds = grouped_folds(groups, busi_m.df.label.astype(str).to_numpy(), 3, 0)
    return sam, data, folds


def cache_dir() -> Path:
    from buscad.utils import cache_root

    d = cache_root() / "detector" / "select"
    d.mkdir(parents=True, exist_ok=True)
    return d


def cmd_heads(names: list[str], threads: int) -> None:
    import torch

    from buscad.segment.base import sigmoid
    from buscad.segment.detector import DetectorConfig
    from buscad.segment.detector_train import HeadTrainConfig, head_runner, train_head

    _, data, folds = load(threads)
    torch.set_num_threads(threads)
    for name in names:
        kw, epochs = HEADS[name]
        cfg = DetectorConfig(**kw)
        heat = np.zeros((len(data), 64, 64), np.float32)
        cpu = []
        for k in range(3):
            tr, te = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
            tc = HeadTrainConfig(epochs=epochs, threads=threads)
            m, h = train_head(data.train_input(cfg), data.targets, cfg, tc, rows=tr)
            cpu.append(h["cpu_s"])
            run = head_runner(m)
            for s in range(0, len(te), 32):
                idx = te[s : s + 32]
                heat[idx] = sigmoid(run(data.embeddings[idx].astype(np.float32))[:, 0])
            print(f"{name} fold {k}: {h['cpu_s']:.0f} s CPU, loss {h['loss'][-1]:.4f}", flush=True)
        np.save(cache_dir() / f"{name}.npy", heat)
        (cache_dir() / f"{name}.json").write_text(json.dumps({"cpu_s": cpu, "epochs": epochs}))


class Memo:
    """LiteMedSAM outlines of one image's boxes, memoised by box."""

    def __init__(self, sam, data, i: int) -> None:
        self.sam, self.data, self.i, self.memo = sam, data, i, {}

    def __call__(self, box):
        from buscad.segment.detector_train import outline_fn

        if box not in self.memo:
            self.memo[box] = outline_fn(self.sam, self.data.embedding(self.i))(box)
        return self.memo[box]


def diagnose(data, folds, heat, props, rules, cfg, sam, memos) -> dict:
    """Each lesion's first failing stage (module docstring)."""
    from buscad.segment.base import box_iou, mask_box
    from buscad.segment.detector import cells_to_box, heat_components, mask_iou
    from buscad.segment.detector_train import image_outcome, lesions_of

    out = {
        "lesions": 0,
        "no_component": 0,
        "box_wrong": 0,
        "outline_wrong": 0,
        "rule_dropped": 0,
        "found": 0,
        "oracle_box_outline_found": 0,
    }
    for i in range(len(data)):
        les = lesions_of(data.masks[i])
        if not les:
            continue
        im = props[i]
        kept = im.kept(rules[int(folds[i])], cfg)
        found_ids = set()
        used: set[int] = set()
        for k in kept:  # greedy matching as image_outcome
            best, bv = -1, 0.5
            for j in range(len(les)):
                if j not in used and im.lesion_iou[k, j] >= bv:
                    best, bv = j, float(im.lesion_iou[k, j])
            if best >= 0:
                used.add(best)
        found_ids = used
        comps = heat_components(heat[i], data.shapes[i], cfg)
        for j, t in enumerate(les):
            out["lesions"] += 1
            tb = mask_box(t)
            oracle = memos[i](tb)
            out["oracle_box_outline_found"] += int(mask_iou(oracle.mask, t) >= 0.5)
            if j in found_ids:
                out["found"] += 1
            elif not comps:
                out["no_component"] += 1
            elif len(im.proposals) and im.lesion_iou[:, j].max() >= 0.5:
                out["rule_dropped"] += 1
            elif max(box_iou(cells_to_box(c, data.shapes[i], 0.1), tb) for c, _, _ in comps) >= 0.5:
                out["outline_wrong"] += 1
            else:
                out["box_wrong"] += 1
    _ = image_outcome
    return out


def evaluate(data, folds, props, rules, cfg) -> dict:
    """Pooled CV numbers of the fold-wise rules (module docstring)."""
    from buscad.segment.detector_train import image_outcome

    found = false = lesions = free = free_none = anyhit = 0
    dices = []
    for i in range(len(data)):
        im = props[i]
        kept = im.kept(rules[int(folds[i])], cfg)
        f, x = image_outcome(im.lesion_iou, kept)
        found, false, lesions = found + f, false + x, lesions + im.n_lesions
        if im.n_lesions:
            anyhit += int((im.lesion_iou >= 0.5).any(axis=0).sum()) if len(im.proposals) else 0
            dices.append(float(im.dice[kept[0]]) if kept else 0.0)
        else:
            free += 1
            free_none += int(len(kept) == 0)
    return {
        "found_share": found / lesions,
        "false_per_image": false / len(data),
        "dice_top_all": float(np.mean(dices)),
        "normals_no_candidate": free_none / max(free, 1),
        "proposal_recall_before_rule": anyhit / lesions,
        "proposals_per_image": float(np.mean([len(props[i].proposals) for i in range(len(data))])),
    }


def light(im, truth: np.ndarray):
    """``im`` without the outlines: features, overlaps and each outline's Dice with ``truth``."""
    from buscad.segment.detector import Proposal
    from buscad.segment.detector_train import ImageProposals

    d = [
        float(2 * (p.candidate.mask & truth).sum() / (p.candidate.mask.sum() + truth.sum()))
        for p in im.proposals
    ]
    out = ImageProposals([Proposal(None, p.features, p.box) for p in im.proposals], *im_iou(im))
    out.dice = d
    return out


def im_iou(im):
    return im.lesion_iou, im.pair_iou


def save_light(path: Path, props: dict) -> None:
    doc = {
        str(i): {
            "f": im.features().tolist(),
            "li": im.lesion_iou.tolist(),
            "nl": im.n_lesions,
            "pi": im.pair_iou.tolist(),
            "d": im.dice,
        }
        for i, im in props.items()
    }
    path.write_text(json.dumps(doc))


def load_light(path: Path) -> dict:
    from buscad.segment.detector import ALL_FEATURES, Proposal
    from buscad.segment.detector_train import ImageProposals

    out = {}
    for k, v in json.loads(path.read_text()).items():
        f = np.asarray(v["f"], float).reshape(-1, len(ALL_FEATURES))
        li = np.asarray(v["li"], float).reshape(len(f), v["nl"])
        im = ImageProposals(
            [Proposal(None, r, (0, 0, 0, 0)) for r in f],
            li,
            np.asarray(v["pi"], float).reshape(len(f), len(f)),
        )
        im.dice = v["d"]
        out[int(k)] = im
    return out


def cmd_eval(heads: list[str], proposals: list[str], rules: list[str], threads: int) -> None:
    from buscad.segment.detector import DetectorConfig
    from buscad.segment.detector_train import ImageProposals, choose_rule, propose

    sam, data, folds = load(threads)
    record = json.loads(OUT.read_text()) if OUT.is_file() else {"rows": []}
    done = {(r["head"], r["proposals"], r["rule"]) for r in record["rows"]}
    for hname in heads:
        heat = np.load(cache_dir() / f"{hname}.npy")
        memos = {i: Memo(sam, data, i) for i in range(len(data))}
        for pname in proposals:
            cfg = DetectorConfig(**{**HEADS[hname][0], **PROPOSALS[pname]})
            lpath = cache_dir() / f"proposals_{hname}_{pname}.json"
            full = None
            if lpath.is_file():
                props = load_light(lpath)
            else:
                t0 = time.perf_counter()
                full = {
                    i: ImageProposals.build(
                        propose(heat[i], data.shapes[i], memos[i], cfg), data.masks[i]
                    )
                    for i in range(len(data))
                }
                props = {i: light(im, data.masks[i]) for i, im in full.items()}
                save_light(lpath, props)
                print(f"{hname}/{pname}: proposals {time.perf_counter() - t0:.0f} s", flush=True)
            for rname in rules:
                if (hname, pname, rname) in done:
                    continue
                feats, bounds = RULES[rname]
                fold_rules = {
                    k: choose_rule(
                        [props[i] for i in range(len(data)) if folds[i] != k],
                        cfg,
                        features=feats,
                        **bounds,
                    )
                    for k in range(3)
                }
                row = {
                    "head": hname,
                    "proposals": pname,
                    "rule": rname,
                    **evaluate(data, folds, props, fold_rules, cfg),
                    "thresholds": [fold_rules[k].threshold for k in range(3)],
                }
                if rname == rules[0] and full is not None:
                    row["diagnosis"] = diagnose(
                        data, folds, heat, full, fold_rules, cfg, sam, memos
                    )
                print(json.dumps(row), flush=True)
                from buscad.utils import atomic_write_json

                record = json.loads(OUT.read_text()) if OUT.is_file() else {"rows": []}
                record["rows"].append(row)  # re-read: another eval may have added rows
                atomic_write_json(OUT, record)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["heads", "eval"])
    ap.add_argument("--heads", nargs="+", default=list(HEADS))
    ap.add_argument("--proposals", nargs="+", default=list(PROPOSALS))
    ap.add_argument("--rules", nargs="+", default=list(RULES))
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    import buscad._compat  # noqa: F401

    if a.step == "heads":
        cmd_heads(a.heads, a.threads)
    else:
        cmd_eval(a.heads, a.proposals, a.rules, a.threads)


if __name__ == "__main__":
    main()
