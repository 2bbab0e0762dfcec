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
#: The integrated model fitted again without the models that read the reader's BI-RADS
#: (built only when ``clinical.reader_as_input: true`` lets a model read it).
INTEGRATED_WITHOUT_READER = "integrated_without_reader"

#: Bumped when the models stage exports something new (1: portable refit models;
#: 2: the outline model and the integrated model's options; 3: reader_models.json and
#: the reader's BI-RADS no model input by default; 4: fold-clean deep-feature models,
#: rows without a model's inputs not scored, input_gaps.csv).
MODELS_EXPORT_VERSION = 4
#: Models that read the CNN's deep features: their out-of-fold scores come from fold CNNs.
DEEP_FEATURE_MODELS = ("dlr", "cldlr")


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
    cfg: StudyConfig,
    df: pd.DataFrame,
    table: pd.DataFrame,
    fold_features: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, list[str], dict[str, Any], list[str], pd.DataFrame]:
    """Fit every configured classical/fusion model on the training rows and predict all rows.

    Training rows get out-of-fold predictions (grouped ``cv_fold``); other rows
    get the prediction of the model refit on all training rows.

    Models on deep features (:data:`DEEP_FEATURE_MODELS`) are fold-clean: the
    final CNN saw every training row, so its features of a training row carry
    that row's label. For each deep fold ``f`` (``deep_fold``), the model is fit
    on the other training rows' features from the CNN trained without fold
    ``f`` (``fold_features``, ``cnn_fold == f``) and gives the decision values
    ``d`` of the fold-``f`` rows from the same CNN's features. The model refit on
    all training rows (final CNN features; what is exported and scores the other
    rows) gets its Platt sigmoid ``P = 1 / (1 + exp(A d + B))`` fitted on those
    out-of-fold ``d``, and the training rows' scores are ``P(d)``: thresholds,
    calibration and the integrated model's weights never read in-sample CNN
    features. The integrated model reads these models' scores as columns (as it
    reads the CNN's out-of-fold score).

    A row none of whose inputs a model has (:func:`buscad.classical.inputs.input_gaps`,
    e.g. the clinical model on a cohort without age) gets no score (NaN), never a
    score from imputed constants.

    The reader's BI-RADS (``clinical.reader_column``) is never a model input
    unless ``clinical.reader_as_input`` is true: then the US model reads it (and
    the clinical/CLDLR models when ``clinical.columns`` lists it), the integrated
    model reads it through them, and :data:`INTEGRATED_WITHOUT_READER` fuses the
    same single models less those that read it.

    Returns
    -------
    predictions : pandas.DataFrame
        ``case_id, label, cohort, age, <model>...``.
    notes : list of str
        Models that could not be built (e.g. no clinical data in the training
        rows) and which models read the reader's BI-RADS.
    fitted : dict
        The refit models (name -> fitted estimator; not the shortcut references).
    reader_models : list of str
        The models offered the reader's BI-RADS as an input (empty by default).
    input_gaps : pandas.DataFrame
        ``case_id`` then, per model, how many of its inputs each row lacks (0:
        complete; NaN: the row has none of them and is not scored).
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
    deep_fold = df["deep_fold"].to_numpy()[tr] if "deep_fold" in df else None
    fold_clean = bool(deep_cols) and fold_features is not None and deep_fold is not None
    if deep_cols and not fold_clean:
        for n in DEEP_FEATURE_MODELS:
            if n in cfg.models:
                notes.append(
                    f"{n.upper()} not built: no fold CNN features of the training rows "
                    "(its out-of-fold scores would read features of a CNN that saw the row)"
                )
    if "dlr" in cfg.models and fold_clean:
        models["dlr"] = C.DLR(include=DEEP_FEATURES)
    reader = cfg.clinical.reader_column
    as_input = bool(reader) and cfg.clinical.reader_as_input

    def allowed(cols: list[str]) -> list[str]:
        """``cols`` without the reader's BI-RADS unless the config makes it an input."""
        return [c for c in dict.fromkeys(cols) if as_input or c != reader]

    clin_cfg = allowed(list(cfg.clinical.columns))
    num = [c for c in clin_cfg if c in X and pd.api.types.is_numeric_dtype(X[c])]
    cat = [c for c in clin_cfg if c in X and not pd.api.types.is_numeric_dtype(X[c])]
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
            absent = [c for c in clin_cfg if c not in X.columns]
            empty = [c for c in clin_cfg if c in X.columns]
            why = "; ".join(
                part
                for part in (
                    f"no column {', '.join(map(repr, absent))}" if absent else "",
                    f"{', '.join(map(repr, empty))} empty in every training row" if empty else "",
                )
                if part
            )
            notes.append(f"clinical model not built: {why or 'clinical.columns is empty'}")
    us_cols = present(allowed([*cfg.clinical.us_columns, *([reader] if as_input else [])]))
    if "us" in cfg.models:
        if us_cols:
            models["us"] = C.USModel(columns=us_cols, random_state=cfg.seed)
        else:
            notes.append("US model not built: no BI-RADS lexicon columns in the training rows")
    if "cldlr" in cfg.models and fold_clean:
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
    fits: dict[str, Any] = {}
    for name, est in {**models, **shortcut}.items():
        Xm = X if name in ("clinical", "us", "cldlr") else Xn
        if name in DEEP_FEATURE_MODELS:
            assert fold_features is not None and deep_fold is not None
            out[name], fit = _fold_clean_oof_and_predict(
                est, Xm, y, tr, deep_fold, fold_features, deep_cols
            )
        else:
            out[name], fit = _oof_and_predict(est, Xm, y, tr, folds, cfg.seed)
        fits[name] = fit
        if name in models:
            fitted[name] = fit
    offered = {"clinical": clin, "us": us_cols, "cldlr": clin}
    reader_models = [n for n in models if as_input and reader in offered.get(n, [])]
    if "integrated" in cfg.models:
        wanted = cfg.integrated.models
        names = [n for n in models if wanted is None or n in wanted]
        if "deep" in out and (wanted is None or "deep" in wanted):
            names.append("deep")
            Xn = Xn.assign(_deep_score=out["deep"].to_numpy())
        # deep-feature models enter as their fold-clean scores (swapped back for the refit models)
        as_score = [n for n in names if n in DEEP_FEATURE_MODELS]
        Xn = Xn.assign(**{f"_{n}_score": out[n].to_numpy() for n in as_score})
        variants = [("integrated", names)]
        if any(n in reader_models for n in names):
            variants.append(
                (INTEGRATED_WITHOUT_READER, [n for n in names if n not in reader_models])
            )
        Xs = pd.concat([X.drop(columns=[c for c in Xn.columns if c in X.columns]), Xn], axis=1)
        for vname, vbases in variants:
            if len(vbases) < 2:
                notes.append(
                    f"{vname} model not built: fewer than two single models"
                    + (" that do not read the reader's BI-RADS" if vname != "integrated" else "")
                )
                continue
            bases = [
                (
                    n,
                    C.ColumnScore(f"_{n}_score") if n == "deep" or n in as_score else models[n],
                )
                for n in vbases
            ]
            stack = C.StackingIntegrator(
                estimators=bases,
                cv=cfg.split.cv_folds,
                stack_method=cfg.integrated.stack_method,
                positive=cfg.integrated.positive,
                weights=cfg.integrated.weights,
                C=cfg.integrated.C,
                random_state=cfg.seed,
            )
            out[vname], stack_fit = _oof_and_predict(
                stack, Xs, y, tr, folds, cfg.seed, groups=groups
            )
            # the same fusion with the refit models in place of their score columns
            # (identical scores on the non-training rows; what the bundle runs)
            stack_fit.estimators_ = [
                (n, fitted[n] if n in as_score else e) for n, e in stack_fit.estimators_
            ]
            fitted[vname] = fits[vname] = stack_fit
            if vname == "integrated" and len(variants) > 1:
                reader_models.append("integrated")
    if reader_models:
        notes.append(
            f"the reader's BI-RADS ('{reader}') is an input of: {', '.join(reader_models)} "
            f"(clinical.reader_as_input: true); their scores partly reflect the radiologist's "
            f"own call"
            + (
                f"; {INTEGRATED_WITHOUT_READER} fuses the same models without it"
                if INTEGRATED_WITHOUT_READER in out
                else ""
            )
        )
    gaps = _mask_without_inputs(out, fits, X)
    if reader and reader in df and df[reader].notna().any():
        from buscad.data.birads import birads_rank

        out[READER_MODEL] = birads_rank(df[reader])
    return out, notes, fitted, reader_models, gaps


def _mask_without_inputs(out: pd.DataFrame, fits: dict[str, Any], X: pd.DataFrame) -> pd.DataFrame:
    """Blank (NaN) each model's score on rows without any of its inputs; the gap table.

    Returns ``case_id`` and, per model, the number of its inputs missing in each
    row (NaN where the row is not scored).
    """
    from buscad.classical.inputs import input_gaps

    gaps = pd.DataFrame({"case_id": out["case_id"].to_numpy()})
    for name, est in fits.items():
        g = input_gaps(est, X)
        ok = g["scorable"].to_numpy()
        out.loc[~ok, name] = np.nan
        gaps[name] = np.where(ok, g["n_missing"].to_numpy(float), np.nan)
    return gaps


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


def _fold_clean_oof_and_predict(
    est,
    X: pd.DataFrame,
    y: np.ndarray,
    tr: np.ndarray,
    deep_fold: np.ndarray,
    fold_features: pd.DataFrame,
    deep_cols: list[str],
) -> tuple[np.ndarray, Any]:
    """Fold-clean out-of-fold P(malignant) of a deep-feature model; refit prediction elsewhere.

    ``deep_fold``: the deep fold of each training row. For fold ``f``, the rows'
    deep features are replaced by those of the CNN trained without fold ``f``
    (``fold_features`` rows with ``cnn_fold == f``); ``est`` is fit on the other
    folds' rows and gives the fold-``f`` rows' SVM decision values ``d``. The
    model refit on all training rows (final CNN features) gets its Platt
    sigmoid fitted on ``d`` (``refit_sigmoid``), and the training rows' scores
    are ``1 / (1 + exp(A d + B))`` under that sigmoid.
    """
    from sklearn.base import clone

    s = np.full(len(y), np.nan)
    idx = X.index[tr]
    Xtr = X.loc[idx]
    ytr = y[tr]
    d = np.full(len(idx), np.nan)
    ff = fold_features.assign(image_id=fold_features["image_id"].astype(str))
    for f in sorted(set(deep_fold.tolist())):
        feats = (
            ff[ff["cnn_fold"] == f]
            .set_index("image_id")
            .reindex(idx.astype(str))[deep_cols]
            .set_axis(idx, axis=0)
        )
        Xf = pd.concat([Xtr.drop(columns=deep_cols), feats], axis=1)[Xtr.columns]
        te = deep_fold == f
        model = clone(est).fit(Xf[~te], ytr[~te])
        d[te] = model.decision_function(Xf[te])
    fitted = clone(est).fit(Xtr, ytr)
    fitted.refit_sigmoid(d, ytr)
    s[tr] = fitted.sigmoid(d)
    if (~tr).any():
        s[~tr] = fitted.predict_proba(X.loc[X.index[~tr]])[:, 1]
    return s, fitted


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
