#!/usr/bin/env bash
# The BUSI + BrEaST study of configs/busi_breast.yaml, timed; writes runs/busi_breast/ and
# benchmarks/results/busi_breast.json (per cohort AUC with 95% CI for each model and the reader).
# Data: BUSI (Al-Dhabyani et al., Data in Brief 28:104863, 2020) and BrEaST-Lesions_USG
# (Pawlowska et al., Sci Data 11:148, 2024), read in place from ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin/buscad
start=$(date +%s)
$B data import busi ../shared/data/BUSI/Dataset_BUSI_with_GT -o runs/busi_breast/data/busi.csv --no-progress
$B data import breast-lesions-usg ../shared/data/BrEaST-Lesions_USG -o runs/busi_breast/data/breast.csv --no-progress
$B study run configs/busi_breast.yaml -o runs/busi_breast/study
end=$(date +%s)
.venv/bin/python - "$((end - start))" <<'PY'
import json, sys
import pandas as pd
from buscad.utils import atomic_write_json
m = pd.read_csv("runs/busi_breast/study/metrics.csv")
run = json.load(open("runs/busi_breast/study/run.json"))
cols = ["arm", "cohort", "model", "evaluable", "n", "n_missing", "n_partial_inputs", "auc", "auc_lo",
        "auc_hi", "accuracy", "sensitivity", "specificity"]
atomic_write_json("benchmarks/results/busi_breast.json", {
    "data": ["BUSI (Al-Dhabyani et al., Data in Brief 28:104863, 2020)",
             "BrEaST-Lesions_USG (Pawlowska et al., Sci Data 11:148, 2024)"],
    "config": "configs/busi_breast.yaml", "wall_seconds_total": int(sys.argv[1]),
    "stages": run["stages"], "warnings": run["warnings"],
    "metrics": m[[c for c in cols if c in m.columns]].round(6).to_dict(orient="records"),
})
print("wrote benchmarks/results/busi_breast.json")
PY
