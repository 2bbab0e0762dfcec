"""The data audit on BUSI and BrEaST-Lesions_USG: the figures the README quotes.

Each dataset is imported with ``buscad data import`` (every image and mask read and
checked; the manifest points at the files in place) and audited whole with
:func:`buscad.data.audit.run.run_audit` at its defaults (near-duplicate search,
colour overlays, burned-in annotations, mask problems, shortcut AUCs in grouped
5-fold CV, seed 0), with a fresh cache under ``--work`` so that every number comes
from the code being run. Writes ``benchmarks/results/audit.json``: per dataset the
audit's ``summary.json`` figures, the byte-identical file pairs, the label-conflict
groups, and every shortcut row (model AUC = ``roc_auc_score`` of the pooled
out-of-fold logistic-regression probabilities; single-feature AUC = ``max(A, 1 - A)``
of the raw values, ``A`` the Mann-Whitney AUC).

With ``--annotation-sample N`` it also lists N images flagged as carrying burned-in
annotations, drawn at random (seed 0) from BUSI, for a check by eye; the verdicts go
in ``benchmarks/results/audit_annotation_check.csv`` (columns ``image_id, verdict, seen``:
``marks`` when calipers or text are visible, ``none`` otherwise; ``seen`` says what) and
the precision ``marks / N`` is added to the JSON when that file exists. The verdicts in
the repository were given by eye on the images at full size.

Data: BUSI (Al-Dhabyani W et al., Data in Brief 28:104863, 2020; CC0) and
BrEaST-Lesions_USG (Pawlowska A et al., Sci Data 11:148, 2024; TCIA DOI
10.7937/9WKK-Q141; CC BY 4.0), read in place from ``../shared/data``; nothing
holding their pixels is written to the repository.

Example (about 10 min on 2 cores)::

    PYTHONPATH=src .venv/bin/python benchmarks/audit.py --work runs/audit-bench
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from buscad.utils import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
OUT = REPO / "benchmarks" / "results" / "audit.json"
CHECK = REPO / "benchmarks" / "results" / "audit_annotation_check.csv"
#: name -> (import format, folder under ``--data``, citation)
DATASETS = {
    "BUSI": (
        "busi",
        Path("BUSI") / "Dataset_BUSI_with_GT",
        "Al-Dhabyani W et al., Data in Brief 28:104863 (2020); CC0",
    ),
    "BrEaST": (
        "breast-lesions-usg",
        Path("BrEaST-Lesions_USG"),
        "Pawlowska A et al., Sci Data 11:148 (2024); TCIA DOI 10.7937/9WKK-Q141; CC BY 4.0",
    ),
}
#: Figures of ``summary.json`` copied into the results file.
SUMMARY_KEYS = (
    "n_images",
    "n_unreadable",
    "labels",
    "exact_duplicate_pairs",
    "exact_duplicate_file_pairs",
    "exact_duplicate_images",
    "near_duplicate_pairs",
    "duplicate_groups",
    "images_in_duplicate_groups",
    "largest_duplicate_group",
    "conflict_groups",
    "conflict_images",
    "colour_images",
    "colour_overlay_images",
    "colour_tint_images",
    "annotated_images",
    "annotated_calipers",
    "annotated_text",
    "mask_problems",
    "shortcut_warn_auc",
    "method",
    "timings_s",
)


def git_commit() -> str:
    """The repository's HEAD commit, with ``+dirty`` when tracked files differ from it."""
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return head + ("+dirty" if dirty else "")


def audit_dataset(name: str, data: Path, work: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """Import and audit one dataset; its results entry and the audit's flags table."""
    from buscad.data.audit.run import run_audit
    from buscad.data.importers.registry import import_dataset
    from buscad.data.manifest import Manifest

    fmt, sub, cite = DATASETS[name]
    src = data / sub
    if not src.is_dir():
        raise SystemExit(f"{src}: dataset not found (see ../shared/data/README.md)")
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rep = import_dataset(fmt, src, folder / "manifest.csv", progress=False)
    t_import = time.perf_counter() - t0
    man = Manifest.load(folder / "manifest.csv")
    res = run_audit(
        man,
        folder / "audit",
        seed=0,
        cache_dir=work / "cache",
        report=False,
        log=lambda m: print(f"{name}: {m}", flush=True),
    )
    s = res.summary
    pairs = res.pairs
    file_pairs = pairs[pairs["kind"] == "exact file"] if len(pairs) else pairs
    conflicts = res.conflicts.groupby("dup_group")["image_id"].agg(lambda v: sorted(map(str, v)))
    shortcuts = [
        {
            "shortcut": r.shortcut,
            "kind": r.kind,
            "features": r.features,
            "auc": None if not np.isfinite(r.auc) else round(float(r.auc), 4),
            "direction": r.direction if isinstance(r.direction, str) else "",
            "n": int(r.n),
            "n_malignant": int(r.n_malignant),
        }
        for r in res.shortcuts.itertuples(index=False)
    ]
    entry = {
        "source": str(sub),
        "citation": cite,
        "imported": rep.n_kept,
        "import_skipped": rep.n_skipped,
        "import_s": round(t_import, 1),
        **{k: s[k] for k in SUMMARY_KEYS},
        "exact_duplicate_file_pair_ids": [
            [str(a), str(b)]
            for a, b in zip(file_pairs["image_id_a"], file_pairs["image_id_b"], strict=True)
        ],
        "conflict_group_ids": [list(v) for v in conflicts.to_list()],
        "shortcuts": shortcuts,
    }
    return entry, res.flags


def annotation_sample(flags: pd.DataFrame, n: int, seed: int = 0) -> list[str]:
    """``n`` image ids drawn at random (``seed``) from the images flagged as annotated."""
    ids = flags.loc[flags["has_annotations"].astype(bool), "image_id"].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(ids, size=min(n, len(ids)), replace=False).tolist())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "audit-bench")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--annotation-sample", type=int, default=40)
    args = ap.parse_args()
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "audit",
        "command": "benchmarks/audit.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "data"),
        "code": git_commit(),
        "cpus": os.cpu_count(),
        "load_avg_start": round(os.getloadavg()[0], 2),
        "datasets": {},
    }
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        entry, flags = audit_dataset(name, args.data, args.work)
        if name == "BUSI" and args.annotation_sample:
            sample = annotation_sample(flags, args.annotation_sample)
            check: dict[str, Any] = {"sample_seed": 0, "sample": sample}
            if CHECK.is_file():
                verdicts = pd.read_csv(CHECK).set_index("image_id")["verdict"]
                missing = sorted(set(sample) - set(verdicts.index))
                if missing:
                    raise SystemExit(f"{CHECK}: no verdict for {missing[:3]} ...")
                v = verdicts.loc[sample]
                check.update(
                    checked=len(v),
                    marks_visible=int((v == "marks").sum()),
                    precision=round(float((v == "marks").mean()), 4),
                )
            entry["annotation_check"] = check
        result["datasets"][name] = entry
    result["load_avg_end"] = round(os.getloadavg()[0], 2)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
