"""Fitting the classical and fusion models of a study arm: out-of-fold training scores, test predictions, export."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from buscad.config import StudyConfig
from buscad.study.cohorts import Arm

#: Prediction columns of the shortcut references (never candidates for "best model").
SHORTCUT_MODELS = ("shortcut: mask geometry", "shortcut: image size")
#: Columns of the CNN's penultimate features (``deep_0000``...; not ``deep_fold`` or ``deep_oof``).
DEEP_FEATURES = r"^deep_\d+$"
READER_MODEL = "reader BI-RADS"

#: Bumped when the models stage exports something new (1: portable refit models;
#: 2: the outline model and the integrated model's options).
MODELS_EXPORT_VERSION = 2


def _outline_features() -> tuple[str, ...]:
    from buscad.data.audit.masks import GEOMETRY_FEATURES
    from buscad.segment.descriptors import DESCRIPTOR_NAMES

    return (*GEOMETRY_FEATURES, *(f"morph_{n}" for n in DESCRIPTOR_NAMES))


#: Inputs of the ``outline`` model: the outline's geometry (the audit's mask geometry),
#: its smoothed shape and the gain-free echo ratios (:mod:`buscad.segment.descriptors`).
OUTLINE_FEATURES: tuple[str, ...] = _outline_features()


def _youden(pred: pd.DataFrame, arm: Arm) -> float:
    from buscad.evaluate.metrics import youden_threshold

    tr = pred[pred["cohort"] == arm.train_label]
    return youden_threshold(tr["label"].to_numpy(), tr["deep"].to_numpy())


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name.replace("→", "-to-"))


# ============================================================== models
def fit_and_predict(
    cfg: StudyConfig, df: pd.DataFrame, table: pd.DataFrame
) -> tuple[pd.DataFrame, list[str], dict[str, Any]]:
    """Fit every configured classical/fusion model on the training rows and predict all rows.

    Training rows get out-of-fold predictions (grouped ``cv_fold``); other rows
    get the prediction of the model refit on all training rows. Returns the
    predictions table (``case_id, label, cohort, age, <model>...``), notes on
    models that could not be built (e.g. no clinical data in the training rows)
    and the refit models (name -> fitted estimator; not the shortcut references).
    """
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from buscad import classical as C
    from buscad.data.audit.masks import GEOMETRY_FEATURES, SIZE_FEATURES

    notes: list[str] = []
    idx = df["image_id"].to_numpy()
    X = table.loc[idx]
    y = (df["label"] == "malignant").to_numpy().astype(int)
    tr = (df["split"] == "train").to_numpy()
    folds = df["cv_fold"].to_numpy()[tr]
    groups = df["group"].astype(str).to_numpy()[tr]
    out = pd.DataFrame({"case_id": idx, "label": y, "cohort": df["eval_cohort"].to_numpy()})
    if "age" in df:
        out["age"] = pd.to_numeric(df["age"], errors="coerce").to_numpy()
    models: dict[str, Any] = {}

    def present(cols: list[str]) -> list[str]:
        return [c for c in cols if c in X.columns and X.loc[tr, c].notna().any()]

    deep_cols = [c for c in X.columns if re.match(DEEP_FEATURES, str(c))]
    if "deep" in cfg.models and "deep_final" in X:
        out["deep"] = np.where(tr, X["deep_oof"].to_numpy(), X["deep_final"].to_numpy())
    if "radiomics" in cfg.models:
        models["radiomics"] = C.radiomics_pipeline(
            icc_threshold=cfg.radiomics.icc_threshold,
            spearman_threshold=cfg.radiomics.rho_threshold,
            exclude=None if cfg.radiomics.shape_features else "_shape2D_",
            random_state=cfg.seed,
        )
    if "dlr" in cfg.models and deep_cols:
        models["dlr"] = C.DLR(include=DEEP_FEATURES)
    num = [c for c in cfg.clinical.columns if c in X and pd.api.types.is_numeric_dtype(X[c])]
    cat = [c for c in cfg.clinical.columns if c in X and not pd.api.types.is_numeric_dtype(X[c])]
    clin = present(num + cat)
    if "clinical" in cfg.models:
        if clin:
            models["clinical"] = C.ClinicalModel(
                numeric=[c for c in num if c in clin],
                categorical=[c for c in cat if c in clin],
                alpha=cfg.clinical.p_threshold,
                random_state=cfg.seed,
            )
        else:
            absent = [c for c in cfg.clinical.columns if c not in X.columns]
            empty = [c for c in cfg.clinical.columns if c in X.columns]
            why = "; ".join(
                part
                for part in (
                    f"no column {', '.join(map(repr, absent))}" if absent else "",
                    f"{', '.join(map(repr, empty))} empty in every training row" if empty else "",
                )
                if part
            )
            notes.append(f"clinical model not built: {why or 'clinical.columns is empty'}")
    us_cols = present(
        list(cfg.clinical.us_columns)
        + ([cfg.clinical.reader_column] if cfg.clinical.reader_column else [])
    )
    if "us" in cfg.models:
        if us_cols:
            models["us"] = C.USModel(columns=us_cols, random_state=cfg.seed)
        else:
            notes.append("US model not built: no BI-RADS lexicon columns in the training rows")
    if "cldlr" in cfg.models and deep_cols:
        if clin:
            models["cldlr"] = C.CLDLR(
                include=DEEP_FEATURES,
                numeric=[c for c in num if c in clin],
                categorical=[c for c in cat if c in clin] or None,
                alpha=cfg.clinical.p_threshold,
            )
        else:
            notes.append(
                "CLDLR not built: no clinical values in the training rows (it would equal DLR)"
            )
    if "outline" in cfg.models:
        cols = present(list(OUTLINE_FEATURES))
        if cols:
            models["outline"] = make_pipeline(
                C.FeatureSubset(include=[f"^{c}$" for c in cols]),
                SimpleImputer(strategy="median", keep_empty_features=True),
                StandardScaler(),
                LogisticRegression(max_iter=5000),
            )
        else:
            notes.append("outline model not built: no outline descriptors in the training rows")
    shortcut = {}
    for name, features in zip(SHORTCUT_MODELS, (GEOMETRY_FEATURES, SIZE_FEATURES), strict=True):
        cols = [c for c in features if c in X]
        if cols:
            shortcut[name] = make_pipeline(
                C.FeatureSubset(include=[f"^{c}$" for c in cols]),
                SimpleImputer(strategy="median"),
                StandardScaler(),
                LogisticRegression(max_iter=2000),
            )
    Xn = X.select_dtypes(include=[np.number, "bool"]).astype(float)
    fitted: dict[str, Any] = {}
    for name, est in {**models, **shortcut}.items():
        Xm = X if name in ("clinical", "us", "cldlr") else Xn
        out[name], fit = _oof_and_predict(est, Xm, y, tr, folds, cfg.seed)
        if name in models:
            fitted[name] = fit
    reader = cfg.clinical.reader_column
    if "integrated" in cfg.models:
        wanted = cfg.integrated.models
        reader_in_us = bool(reader) and reader in us_cols and "us" in models
        if wanted is None and reader_in_us:
            # by default the AI score never reads the radiologist's own category
            wanted = [n for n in (*models, "deep") if n != "us"]
            notes.append(
                f"integrated model leaves out the US model: it reads the reader's BI-RADS "
                f"('{reader}'); list it in integrated.models to fuse it anyway"
            )
        bases = [(n, models[n]) for n in models if wanted is None or n in wanted]
        if "deep" in out and (wanted is None or "deep" in wanted):
            Xn = Xn.assign(_deep_score=out["deep"].to_numpy())
            bases.append(("deep", C.ColumnScore("_deep_score")))
        if len(bases) >= 2:
            stack = C.StackingIntegrator(
                estimators=bases,
                cv=cfg.split.cv_folds,
                stack_method=cfg.integrated.stack_method,
                positive=cfg.integrated.positive,
                weights=cfg.integrated.weights,
                C=cfg.integrated.C,
                random_state=cfg.seed,
            )
            Xs = pd.concat([X.drop(columns=[c for c in Xn.columns if c in X.columns]), Xn], axis=1)
            out["integrated"], fitted["integrated"] = _oof_and_predict(
                stack, Xs, y, tr, folds, cfg.seed, groups=groups
            )
        else:
            notes.append("integrated model not built: fewer than two single models")
    if reader and reader in df and df[reader].notna().any():
        from buscad.data.birads import birads_rank

        out[READER_MODEL] = birads_rank(df[reader])
    return out, notes, fitted


def export_models(fitted: dict[str, Any], folder: Path) -> list[str]:
    """Write each refit model pickle-free (:mod:`buscad.bundle.portable`) with the inputs it reads.

    ``folder/<name>.safetensors`` + ``.json``; the JSON's metadata holds
    ``inputs`` (:func:`buscad.classical.cv.model_inputs`). Returns notes on models
    that could not be exported.
    """
    from buscad.bundle.portable import save_portable
    from buscad.classical.inputs import model_inputs
    from buscad.errors import ModelFileError

    notes = []
    folder.mkdir(parents=True, exist_ok=True)
    for name, est in fitted.items():
        try:
            save_portable(est, folder / name, metadata={"inputs": model_inputs(est)})
        except ModelFileError as exc:
            notes.append(f"{name} model not exported to the bundle: {exc}")
    return notes


def _oof_and_predict(
    est,
    X: pd.DataFrame,
    y: np.ndarray,
    tr: np.ndarray,
    folds: np.ndarray,
    seed: int,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, Any]:
    """Out-of-fold P(malignant) on training rows, refit-on-all prediction elsewhere; the refit model."""
    from sklearn.base import clone

    from buscad.classical.cv import cross_val_predict_grouped

    s = np.full(len(y), np.nan)
    Xtr = X.loc[X.index[tr]]
    s[tr] = cross_val_predict_grouped(clone(est), Xtr, y[tr], folds=folds)
    kw = {"groups": groups} if groups is not None else {}
    fitted = clone(est).fit(Xtr, y[tr], **kw)
    if (~tr).any():
        s[~tr] = fitted.predict_proba(X.loc[X.index[~tr]])[:, 1]
    return s, fitted
