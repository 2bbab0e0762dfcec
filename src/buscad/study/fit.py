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
#: rows without a model's inputs not scored, input_gaps.csv; 5: fusion.json and the
#: cross-cohort fusion; 6: a stacked model's inner folds grouped in its out-of-fold scores).
MODELS_EXPORT_VERSION = 6
#: Models that read the CNN's deep features: their out-of-fold scores come from fold CNNs.
DEEP_FEATURE_MODELS = ("dlr", "cldlr")
#: Column of the integrated model's training table naming each row's cohort (read by
#: ``weights: cross_cohort`` for its leave-one-cohort-out split; never a model input).
FUSION_COHORT = "_fusion_cohort"


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

    ``integrated.weights: cross_cohort``: the integrated model's weights are fitted
    on leave-one-cohort-out member scores when the training rows come from two or
    more cohorts (``df["cohort"]``): each member fitted on the other cohorts scores
    the held-out one (:class:`~buscad.classical.StackingIntegrator` ``inner="cohorts"``);
    DLR/CLDLR enter with their heads fitted on the other cohorts' fold-CNN features
    (:func:`_loco_deep_scores`). With one cohort the inner split is grouped CV.

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
    if "medsam" in cfg.models:
        from buscad.segment.medsam_features import COLUMN_PATTERN

        cols = present([c for c in X.columns if re.match(COLUMN_PATTERN, str(c))])
        if cols:
            models["medsam"] = C.MedSAMModel(include=COLUMN_PATTERN, random_state=cfg.seed)
        else:
            notes.append("medsam model not built: no LiteMedSAM features in the training rows")
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
        else:  # groups reach the models whose own inner CV reads them (medsam's C)
            out[name], fit = _oof_and_predict(est, Xm, y, tr, folds, cfg.seed, groups=groups)
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
        cross = cfg.integrated.weights == "cross_cohort"
        cohort = df["cohort" if "cohort" in df else "eval_cohort"].astype(str).to_numpy()
        loco = cross and len(set(cohort[tr])) >= 2
        score_cols = {f"_{n}_score": out[n].to_numpy(copy=True) for n in as_score}
        if loco and as_score:  # leave-one-cohort-out scores: heads trained on other cohorts
            assert fold_features is not None and deep_fold is not None
            for n in as_score:
                Xm = X if n == "cldlr" else Xn
                score_cols[f"_{n}_score"][tr] = _loco_deep_scores(
                    models[n], Xm, y, tr, deep_fold, cohort[tr], fold_features, deep_cols
                )
        Xn = Xn.assign(**score_cols, **{FUSION_COHORT: cohort})
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
                positive=cross or cfg.integrated.positive,
                weights="fit" if cross else cfg.integrated.weights,
                inner="cohorts" if cross else "folds",
                cohort_column=FUSION_COHORT,
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


def fusion_summary(out: pd.DataFrame, fitted: dict[str, Any], train_label: str) -> dict[str, Any]:
    """Does the integrated model beat its members on honest held-out scores? Its headline model.

    Basis: with ``weights: cross_cohort`` (``inner="cohorts"``), the fusion's own
    inner split: each member's leave-one-cohort-out scores (``oof_proba_``; with
    one development cohort, its grouped CV scores) beside the integrated model's
    :meth:`~buscad.classical.StackingIntegrator.held_out_fusion` scores (weights
    refitted without the held-out cohort or fold). Otherwise the training rows'
    out-of-fold scores of ``out`` (the predictions table).

    For each member ``m``, on the rows where both ``m`` and the integrated model
    have a score, ``Δ_m = AUC_m − AUC_integrated`` (AUC: the Mann–Whitney
    probability that a malignant row outscores a benign one, ties ½). The fusion
    *loses* when ``max_m Δ_m > 0``; the headline model is then the member with
    the highest AUC, else ``integrated``.

    Returns
    -------
    dict
        Empty when there is no integrated model; else ``basis``, ``inner_split``,
        ``weights`` (member -> weight, ``stack_method`` scale), ``intercept``,
        ``dropped`` (members with weight 0), ``auc`` (model -> AUC on the basis
        rows), ``by_split`` (per held-out cohort/fold: ``split``, ``n``, AUC of
        each model), ``best_member``, ``best_member_auc``, ``integrated_auc``,
        ``loses``, ``headline_model`` and ``notes`` (sentences for the report).
    """
    from sklearn.metrics import roc_auc_score

    stack = fitted.get("integrated")
    if stack is None:
        return {}
    names = [n for n, _ in stack.estimators_]
    notes: list[str] = []
    if stack.inner == "cohorts" and stack.oof_proba_ is not None:
        scores = stack.oof_proba_.assign(integrated=stack.held_out_fusion())
        y = np.asarray(stack._oof_y)
        split = np.asarray(stack.oof_split_).astype(str)
        if stack.inner_split_ == "leave-one-cohort-out":
            short = "leave-one-cohort-out scores"
            basis = (
                f"leave-one-cohort-out scores over {', '.join(sorted(set(split)))}: each "
                "member trained on the other development cohorts scores the held-out one, the "
                "fusion's weights refitted without it (the CNN score and the CNN features of "
                "DLR/CLDLR come from the fold CNNs, which saw the held-out cohort's other rows)"
            )
        else:
            short = "grouped CV scores"
            basis = (
                f"grouped {len(set(split))}-fold CV scores of the one development cohort "
                "(weights refitted without the held-out fold)"
            )
            notes.append(
                "fusion: one development cohort, so the integrated model's weights "
                "(weights: cross_cohort) were fitted on grouped CV scores, not "
                "leave-one-cohort-out: they do not show which members transfer to a new cohort"
            )
    else:
        rows = (out["cohort"] == train_label).to_numpy()
        scores = out.loc[rows, [*names, "integrated"]].reset_index(drop=True)
        y = out.loc[rows, "label"].to_numpy().astype(int)
        split = np.full(len(y), "pooled")
        short = "training rows' out-of-fold scores"
        basis = "the training rows' out-of-fold scores (grouped CV; predictions.csv)"

    def auc(m: str, rows: np.ndarray) -> float:
        ok = rows & scores[m].notna().to_numpy() & scores["integrated"].notna().to_numpy()
        return float(roc_auc_score(y[ok], scores.loc[ok, m])) if len(set(y[ok])) == 2 else np.nan

    everything = np.ones(len(y), bool)
    margin = {
        m: auc(m, everything) - auc("integrated", scores[m].notna().to_numpy()) for m in names
    }
    member_auc = {m: auc(m, everything) for m in names}
    int_auc = auc("integrated", everything)
    ranked = [m for m in names if np.isfinite(member_auc[m])]
    best = max(ranked, key=lambda m: member_auc[m]) if ranked else None
    loses = any(np.isfinite(d) and d > 0 for d in margin.values())
    if loses:
        best = max((m for m in names if np.isfinite(margin[m])), key=lambda m: margin[m])
    headline = best if loses and best is not None else "integrated"
    by_split = [
        {
            "split": str(sp),
            "n": int((split == sp).sum()),
            **{m: auc(m, split == sp) for m in [*names, "integrated"]},
        }
        for sp in sorted(set(split))
    ]
    dropped = list(getattr(stack, "dropped_", []))
    if dropped:
        notes.append(
            f"fusion: {', '.join(dropped)} got weight 0 in the integrated model (no help on the "
            f"{short})"
        )
    if loses and best is not None:
        notes.append(
            f"fusion: the integrated model falls below its best member on the {short}: AUC "
            f"{int_auc:.3f} vs {best} {member_auc[best]:.3f}; the bundle's headline model is {best}"
        )
    return _json_ready(
        {
            "basis": basis,
            "inner_split": stack.inner_split_,
            "stack_method": stack.stack_method,
            "weights": dict(zip(names, map(float, stack.coef_), strict=True)),
            "intercept": float(stack.intercept_),
            "dropped": dropped,
            "auc": {**member_auc, "integrated": int_auc},
            "by_split": by_split,
            "best_member": best,
            "best_member_auc": member_auc.get(best, np.nan) if best else np.nan,
            "integrated_auc": int_auc,
            "loses": bool(loses),
            "headline_model": headline,
            "notes": notes,
        }
    )


def _json_ready(obj: Any) -> Any:
    """``obj`` with NaN floats as None (strict JSON)."""
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


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
        Xf = _with_fold_features(Xtr, ff, f, deep_cols)
        te = deep_fold == f
        model = clone(est).fit(Xf[~te], ytr[~te])
        d[te] = model.decision_function(Xf[te])
    fitted = clone(est).fit(Xtr, ytr)
    fitted.refit_sigmoid(d, ytr)
    s[tr] = fitted.sigmoid(d)
    if (~tr).any():
        s[~tr] = fitted.predict_proba(X.loc[X.index[~tr]])[:, 1]
    return s, fitted


def _with_fold_features(
    Xtr: pd.DataFrame, ff: pd.DataFrame, f: Any, deep_cols: list[str]
) -> pd.DataFrame:
    """``Xtr`` with its deep-feature columns replaced by fold ``f``'s CNN features of the same rows."""
    idx = Xtr.index
    feats = (
        ff[ff["cnn_fold"] == f]
        .set_index("image_id")
        .reindex(idx.astype(str))[deep_cols]
        .set_axis(idx, axis=0)
    )
    return pd.concat([Xtr.drop(columns=deep_cols), feats], axis=1)[Xtr.columns]


def _loco_deep_scores(
    est,
    X: pd.DataFrame,
    y: np.ndarray,
    tr: np.ndarray,
    deep_fold: np.ndarray,
    cohort: np.ndarray,
    fold_features: pd.DataFrame,
    deep_cols: list[str],
) -> np.ndarray:
    """Leave-one-cohort-out P(malignant) of a deep-feature model on the training rows.

    ``cohort``: the cohort of each training row. A row of cohort ``c`` in deep
    fold ``f`` is scored by the model fitted on the training rows of the *other*
    cohorts, all described by the CNN trained without fold ``f`` (the CNN that
    did not see the row), from that same CNN's features of the row. The head
    never saw cohort ``c``; the CNN saw ``c``'s other rows (one CNN per held-out
    cohort is not trained), so this measures how the head transfers, not the CNN.
    """
    from sklearn.base import clone

    idx = X.index[tr]
    Xtr = X.loc[idx]
    ytr = y[tr]
    s = np.full(len(idx), np.nan)
    ff = fold_features.assign(image_id=fold_features["image_id"].astype(str))
    for f in sorted(set(deep_fold.tolist())):
        Xf = _with_fold_features(Xtr, ff, f, deep_cols)
        for c in sorted(set(cohort.tolist())):
            te = (deep_fold == f) & (cohort == c)
            if te.any():
                model = clone(est).fit(Xf[cohort != c], ytr[cohort != c])
                s[te] = model.predict_proba(Xf[te])[:, 1]
    return s


def _oof_and_predict(
    est,
    X: pd.DataFrame,
    y: np.ndarray,
    tr: np.ndarray,
    folds: np.ndarray,
    seed: int,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, Any]:
    """Out-of-fold P(malignant) on training rows, refit-on-all prediction elsewhere; the refit model.

    ``groups`` (one per training row) reach every fit whose ``fit`` takes them (a
    stacked model's inner folds, the medsam model's choice of C): grouped inner CV.
    """
    from sklearn.base import clone

    from buscad.classical.cv import _fit_accepts_groups, cross_val_predict_grouped

    s = np.full(len(y), np.nan)
    Xtr = X.loc[X.index[tr]]
    # groups reach the fold fits too, so a stacked model's inner folds stay grouped
    s[tr] = cross_val_predict_grouped(clone(est), Xtr, y[tr], groups=groups, folds=folds)
    fitted = clone(est)
    kw = {"groups": groups} if groups is not None and _fit_accepts_groups(fitted) else {}
    fitted.fit(Xtr, y[tr], **kw)
    if (~tr).any():
        s[~tr] = fitted.predict_proba(X.loc[X.index[~tr]])[:, 1]
    return s, fitted
