"""The study runner: one config -> audit, split, deep models, radiomics, classical and fusion models, statistics, galleries, report and bundle; cached stage by stage and resumable."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

from buscad.config import StudyConfig
from buscad.data.manifest import Manifest
from buscad.study.cohorts import (
    Arm,
    _apply_audit_policy,
    _folds,
    _stage_cohort,
    dropped_text,
    study_arms,
)
from buscad.study.fit import (
    DEEP_FEATURE_MODELS,
    MODELS_EXPORT_VERSION,
    READER_MODEL,
    SHORTCUT_MODELS,
    _safe,
    _youden,
    export_models,
    fit_and_predict,
    fusion_summary,
)
from buscad.study.report import PUBLISHED_AUDIT, published_evaluation, write_study_report
from buscad.study.report import headline as _headline
from buscad.study.report import reader_models as _reader_models
from buscad.study.stages import StageResult, StageRunner
from buscad.utils import atomic_write_json, atomic_write_table, file_sha256, stable_hash

#: Bumped when the bundle stage writes something new (2: model.onnx with Grad-CAM;
#: 3: the classical and fusion models; 4: why a configured model is not in it;
#: 5: each model's ``reads_reader``; 6: training record, study flags, OOD model;
#: 7: the OOD model in a frozen ImageNet encoder's space, limit out-of-fold).
BUNDLE_VERSION = 7
#: Bumped when the fold-features stage writes something new (1: each CV fold CNN's
#: features of every training row, for fold-clean deep-feature models).
FOLD_FEATURES_VERSION = 1
#: Bumped when the outline stage writes something new.
ROI_VERSION = 2
#: Bumped when the gallery stage writes something new (2: cases.csv labels every tile).
GALLERY_VERSION = 2
#: Bumped when the evaluation stage's report changes (2: BI-RADS cuts as categories, words;
#: 3: not-evaluable rows and cases lacking some inputs; 4: bottom line and figures first, the
#: synthetic-data notice, legends below the curves, one calibration panel per model).
EVALUATE_VERSION = 4


def _ood_reference(man: Manifest, deep_path: Path, log: Any = None) -> dict[str, Any]:
    """The out-of-distribution model's training features for :func:`write_bundle`.

    The frozen ImageNet encoder's features of the regions the CNN reads
    (:func:`buscad.bundle.ood_encoder.training_features`) and of the whole images
    (the whole-frame model), with the training rows' cross-validation folds for an
    out-of-fold limit; the CNN's own features
    (leave-one-out limit) when the encoder's weights are not installed.
    """
    from buscad.bundle.ood_encoder import SPACE, training_features
    from buscad.errors import ModelFileError

    is_tr = (man.df["split"] == "train").to_numpy()
    rows = np.flatnonzero(is_tr)
    pre = json.loads((deep_path / "model.json").read_text(encoding="utf-8"))["preprocessing"]
    fold_col = next((c for c in ("cv_fold", "deep_fold") if c in man.df), None)
    try:
        feats, kept, frame = training_features(
            man, rows, float(pre.get("margin", 0.1)), whole=pre.get("roi") == "whole"
        )
    except ModelFileError as exc:
        if log is not None:
            log(f"OOD model in the CNN's feature space: {exc}")
        tr = man.df[is_tr]
        cnn = (
            pd.read_parquet(deep_path / "features.parquet")
            .set_index("image_id")
            .reindex(tr["image_id"].astype(str))
            .dropna()
        )
        return {"train_features": cnn.to_numpy(np.float32)}
    folds = None
    if fold_col is not None:
        folds = man.df[fold_col].to_numpy()[rows][kept]
        folds = folds if pd.notna(folds).all() else None
    return {
        "train_features": feats,
        "ood_folds": folds,
        "ood_space": SPACE,
        "frame_features": frame,
    }


@dataclass(frozen=True)
class Roi:
    """The outlines one pass of the study reads: its mode and the outline stage (None: expert masks, nothing added)."""

    mode: str = "expert"
    res: StageResult | None = None
    segmenter: Path | None = None

    def tag(self, arm: Arm) -> str:
        """Stage-name part of an arm under this mode (the arm's name alone for expert masks)."""
        return _safe(arm.name) + ("" if self.mode == "expert" else f"-roi-{self.mode}")

    def label(self, arm: Arm) -> str:
        """Display name of an arm under this mode."""
        return arm.name if self.mode == "expert" else f"{arm.name} [roi: {self.mode}]"

    def data_key(self, key: str) -> str:
        """``key`` of a stage that reads masks, combined with the outline stage's when not expert."""
        if self.res is None or self.mode == "expert":
            return key
        return stable_hash([key, self.res.key])


@dataclass
class StudyResult:
    """Where a run's outputs are and its headline numbers."""

    run_dir: Path
    report: Path
    predictions: dict[str, Path]
    metrics: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    #: Every file or folder the run promises, by name, in the order ``buscad study run`` lists them.
    outputs: dict[str, Path] = field(default_factory=dict)


def _train_config(cfg: StudyConfig, backbone: str, seed: int):
    from buscad.models.registry import get_spec
    from buscad.models.train import TrainConfig

    d = cfg.deep
    spec = get_spec(backbone)
    pretrained = d.pretrained if (d.pretrained == "imagenet" and spec.family != "buscad") else None
    weights = d.weights.get(backbone)
    return TrainConfig(
        backbone=backbone,
        pretrained=pretrained,
        weights_file=str(cfg.resolve(weights)) if weights else None,
        epochs=d.epochs,
        batch_size=d.batch_size,
        lr=d.lr,
        patience=d.patience,
        roi="roi" if d.roi == "mask" else "whole",
        margin=d.margin,
        input_size=d.input_size,
        seed=seed,
        layer_decay=d.layer_decay,
        mixup=d.mixup,
        us_augment=d.us_augment,
        balance_by=d.balance_by,
    )


def _train_cfg_dict(tc) -> dict:
    return {
        k: v for k, v in tc.identity().items() if k not in ("progress", "device", "num_threads")
    }


# ============================================================== the runner
class StudyRun:
    """Run one study config into ``run_dir``.

    Parameters
    ----------
    cfg : StudyConfig
        The validated config.
    run_dir : path-like
        Output folder; ``cache/`` inside it holds the stage outputs.
    stream : file-like, optional
        Progress lines (default: standard error).
    """

    def __init__(
        self, cfg: StudyConfig, run_dir: str | os.PathLike[str], stream: TextIO | None = None
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.arms = study_arms(cfg)
        self.runner = StageRunner(self.run_dir / "cache", total=self._n_stages(), stream=stream)
        self.warnings: list[str] = []
        self.bundle_flags: list[str] = []  # the bundle's failed checks (the report's first warning)
        self.outputs: dict[str, Path] = {}

    def _n_stages(self) -> int:
        cfg = self.cfg
        per_arm = 2  # models, evaluate
        if self._needs_deep():
            per_arm += len(cfg.deep.backbones) * cfg.deep.selection_folds + 1
            per_arm += int(self._needs_fold_features())
            per_arm += 1 if cfg.gallery_size and "deep" in cfg.models else 0
        bundle = int("deep" in cfg.models)
        if bundle and cfg.segment.train is not None and "auto" not in cfg.roi_modes:
            bundle += int(cfg.roi_modes[0] == "expert")  # the bundle's segmenter (all rows)
        modes = cfg.roi_modes
        n_roi = sum(m != "expert" or self._needs_morphology() for m in modes)
        if cfg.segment.train is not None:  # per arm: a segmenter per fold + all, outlines
            n_roi += sum(m != "expert" for m in modes) * len(self.arms) * (cfg.split.cv_folds + 1)
        return (
            len(cfg.cohorts)
            + 1
            + n_roi
            + len(modes)
            * (int(self._needs_radiomics()) + int(self._needs_medsam()) + len(self.arms) * per_arm)
            + len(self.arms)
            + bundle
        )

    # ---------------------------------------------------------------- run
    def run(self) -> StudyResult:
        """Execute every stage (cached ones are reused) and write the report.

        Progress (stage lines and the per-item progress of the long stages,
        :mod:`buscad.progress`) goes to the runner's stream.
        """
        from buscad.progress import reporting

        with reporting(self.runner.stream):
            return self._run()

    def _run(self) -> StudyResult:
        t0 = time.monotonic()
        cfg = self.cfg
        keys, mans = [], []
        for c in cfg.cohorts:
            res, man = _stage_cohort(self.runner, cfg, c)
            keys.append(res.key)
            mans.append(man)
        from buscad.data.manifest import concat

        pooled = concat(mans, root=self.run_dir)
        audit_res = self._audit(pooled, keys)
        audited = Manifest.load(audit_res.path / "kept.csv")
        preds: dict[str, Path] = {}
        metrics = []
        arm_outputs = []
        splits = {arm.name: self._split(arm, audited, audit_res.key) for arm in self.arms}
        self._splits = splits
        self.rois: list[Roi] = []
        multi = cfg.roi_modes != ["expert"]
        for mode in cfg.roi_modes:
            per_fold = mode != "expert" and cfg.segment.model is None
            if not per_fold:
                shared = Roi(
                    mode,
                    self._outlines(mode, audited, audit_res.key),
                    cfg.resolve(cfg.segment.model),
                )
                self.rois.append(shared)
                shared_data = (
                    Manifest.load(shared.res.path / "manifest.csv") if shared.res else audited
                )
                shared_rad = (
                    self._radiomics(shared_data, shared.data_key(audit_res.key), shared)
                    if self._needs_radiomics()
                    else None
                )
                shared_medsam = (
                    self._medsam(shared_data, shared.data_key(audit_res.key), shared)
                    if self._needs_medsam()
                    else None
                )
            for arm in self.arms:
                split_res = splits[arm.name]
                man = Manifest.load(split_res.path / "manifest.csv")
                if per_fold:  # segmenters trained inside the study: out-of-fold outlines
                    roi = self._outlines_oof(mode, arm, man, split_res)
                    self.rois.append(roi)
                    assert roi.res is not None
                    data = Manifest.load(roi.res.path / "manifest.csv")
                    radiomics_res = (
                        self._radiomics(data, roi.data_key(split_res.key), roi)
                        if self._needs_radiomics()
                        else None
                    )
                    medsam_res = (
                        self._medsam(data, roi.data_key(split_res.key), roi)
                        if self._needs_medsam()
                        else None
                    )
                else:
                    roi, data, radiomics_res = shared, shared_data, shared_rad
                    medsam_res = shared_medsam
                if roi.res is not None:
                    man = _with_outlines(man, data)
                deep_res, folds_res = (
                    self._deep(arm, man, roi.data_key(split_res.key), roi)
                    if self._needs_deep()
                    else (None, None)
                )
                cls_res = self._classical(
                    arm,
                    man,
                    split_res,
                    deep_res,
                    radiomics_res,
                    audit_res,
                    roi,
                    folds_res,
                    medsam_res,
                )
                ev_res = self._evaluate(arm, cls_res, man, audit_res, split_res, roi)
                preds[roi.label(arm)] = cls_res.path / "predictions.csv"
                m = pd.read_csv(ev_res.path / "metrics.csv")
                m.insert(0, "arm", arm.name)
                if multi:
                    m.insert(1, "roi", mode)
                metrics.append(m)
                arm_outputs.append((arm, man, deep_res, cls_res, ev_res, roi))
        metrics_df = pd.concat(metrics, ignore_index=True)
        self._shortcut_warnings(metrics_df)
        # the bundle of the first arm; under automatic outlines when run (what deployment sees)
        first = [o for o in arm_outputs if o[0] == self.arms[0]]
        chosen = next((o for o in first if o[5].mode == "auto"), first[0])
        bundle = self._bundle(*chosen, metrics_df) if "deep" in cfg.models else None
        galleries = [
            self._gallery(arm, man, deep_res, cls_res, roi)
            for arm, man, deep_res, cls_res, _, roi in arm_outputs
        ]
        report = write_study_report(
            cfg=cfg,
            run_dir=self.run_dir,
            rois=self.rois,
            warnings=self.warnings,
            arm_outputs=arm_outputs,
            galleries=galleries,
            audit_res=audit_res,
            metrics=metrics_df,
            stages=self.runner.summary(),
            needs_morphology=self._needs_morphology(),
            bundle_flags=self.bundle_flags,
        )
        atomic_write_table(metrics_df, self.run_dir / "metrics.csv")
        secs = time.monotonic() - t0
        outputs = self._outputs(report, bundle, arm_outputs)
        summary = {
            "name": cfg.name,
            "seconds": round(secs, 1),
            "stages": self.runner.summary(),
            "warnings": self.warnings,
            "report": str(report),
            "bundle": str(bundle) if bundle else None,
            "outputs": {k: str(v) for k, v in outputs.items()},
        }
        atomic_write_json(self.run_dir / "run.json", summary)
        return StudyResult(
            self.run_dir,
            report,
            preds,
            metrics_df,
            self.warnings,
            self.runner.summary(),
            secs,
            outputs,
        )

    def _outputs(self, report: Path, bundle: Path | None, arm_outputs: list) -> dict[str, Path]:
        """Every output the run promises (README "Running a whole study"), by name.

        The run folder's own files, then per arm (and outline mode) its evaluation
        report, model card, TRIPOD+AI checklist, tables and predictions, then the
        data audit's report. Only paths that exist are listed (``run.json`` is
        written right after, with this list in it).
        """
        out: dict[str, Path] = {
            "report": report,
            "metrics": self.run_dir / "metrics.csv",
            "run summary": self.run_dir / "run.json",
        }
        if bundle is not None:
            out["bundle"] = bundle
        several = len(arm_outputs) > 1
        for arm, _man, _deep, cls_res, _ev, roi in arm_outputs:
            tag = f" ({roi.label(arm)})" if several else ""
            ev = self.run_dir / published_evaluation(arm, roi)  # the copy the report links
            out[f"evaluation report{tag}"] = ev / "report.html"
            out[f"model card{tag}"] = ev / "model_card.md"
            out[f"TRIPOD+AI checklist{tag}"] = ev / "tables" / "tripod_ai_checklist.md"
            out[f"tables{tag}"] = ev / "tables"
            out[f"predictions{tag}"] = cls_res.path / "predictions.csv"
        out["audit report"] = self.run_dir / PUBLISHED_AUDIT / "report.html"
        return {k: v for k, v in out.items() if v.exists() or k == "run summary"}

    def _needs_deep(self) -> bool:
        """The CNN is trained when a model that uses it is asked for (integrated stacks what exists)."""
        return any(m in self.cfg.models for m in ("deep", "dlr", "cldlr"))

    def _needs_fold_features(self) -> bool:
        """Models read deep features: their out-of-fold scores need each fold CNN's features."""
        return any(m in self.cfg.models for m in DEEP_FEATURE_MODELS)

    def _needs_radiomics(self) -> bool:
        return "radiomics" in self.cfg.models

    def _needs_medsam(self) -> bool:
        return "medsam" in self.cfg.models

    def _medsam_folder(self) -> Path:
        """The converted LiteMedSAM folder of the ``medsam`` model (converted once when absent)."""
        cfg = self.cfg
        if cfg.medsam.folder is not None:
            return cfg.resolve(cfg.medsam.folder)  # type: ignore[return-value]
        from buscad.segment.medsam_convert import ensure_converted

        return ensure_converted()

    def _needs_morphology(self) -> bool:
        from buscad.study.roi import wants_morphology

        c = self.cfg.clinical
        return "outline" in self.cfg.models or wants_morphology([*c.columns, *c.us_columns])

    # ------------------------------------------------------------ outlines
    def _outlines(self, mode: str, audited: Manifest, audit_key: str) -> StageResult | None:
        """Outline every kept row under ``mode`` (None: expert masks and no descriptors wanted)."""
        cfg = self.cfg
        morph = self._needs_morphology()
        if mode == "expert" and not morph:
            return None
        seg_path = cfg.resolve(cfg.segment.model) if mode != "expert" else None

        def work(folder: Path) -> None:
            from buscad.study.roi import outline_manifest

            outline_manifest(
                audited,
                mode,
                folder,
                seg_path,
                jitter=cfg.segment.box_jitter,
                seed=cfg.seed,
                threads=cfg.segment.threads,
                morphology=morph,
            )

        seg_key = None
        if seg_path is not None:
            from buscad.study.roi import segmenter_record

            rec = segmenter_record(seg_path)
            seg_key = [rec["json_sha256"], rec["onnx_sha256"], rec["weights_sha256"]]
        res = self.runner.run(
            f"roi-{mode}",
            {
                "audit": audit_key,
                "mode": mode,
                "segmenter": seg_key,
                "jitter": cfg.segment.box_jitter if mode == "box" else None,
                "seed": cfg.seed,
                "morphology": morph,
                "v": ROI_VERSION,
            },
            work,
        )
        info = json.loads((res.path / "roi.json").read_text())
        self._roi_warnings(mode, info)
        return res

    def _roi_warnings(self, label: str, info: dict) -> None:
        if info["mode"] != "expert":
            self.warnings.append(
                f"roi {label}: {info['found']} of {info['rows']} outlines from the segmenter, "
                f"{info['whole_image_fallback']} with no lesion found (whole image used); "
                f"{info.get('simplification') or info.get('outlines')}"
            )
        if info["unreadable"]:
            self.warnings.append(f"roi {label}: {info['unreadable']} unreadable row(s)")

    def _segmenter(
        self, arm: Arm, man: Manifest, split_key: str, name: str, rows: np.ndarray
    ) -> Path:
        """The segmenter ``name`` of an arm (``f<k>``: CV fold k left out; ``all``), trained
        on ``rows`` of its split manifest with ``segment.train``; its folder (cached stage)."""
        cfg = self.cfg
        st = cfg.segment.train
        assert st is not None

        def work(folder: Path) -> None:
            import torch

            from buscad.segment.base import SegConfig
            from buscad.segment.train import TrainConfig, load_items, train_segmenter

            threads = torch.get_num_threads()
            try:
                seg, _ = train_segmenter(
                    load_items(man.subset(rows)),
                    folder / "segmenter",
                    SegConfig(input_size=st.input_size),
                    TrainConfig(
                        epochs=st.epochs,
                        max_steps=st.max_steps,
                        batch_size=st.batch_size,
                        lr=st.lr,
                        pretrained=st.pretrained,
                        threads=st.threads,
                        seed=cfg.seed,
                    ),
                )
            finally:
                torch.set_num_threads(threads)
            seg.export_onnx(folder / "segmenter")

        r = self.runner.run(
            f"segmenter-{_safe(arm.name)}-{name}",
            {"split": split_key, "rows": name, "train": st.model_dump(), "seed": cfg.seed},
            work,
        )
        return r.path / "segmenter"

    def _outlines_oof(self, mode: str, arm: Arm, man: Manifest, split_res: StageResult) -> Roi:
        """Train a segmenter per CV fold and one on all training rows; outline out-of-fold."""
        cfg = self.cfg
        st = cfg.segment.train
        assert st is not None
        df = man.df
        tr = (df["split"] == "train").to_numpy()
        fold = df["cv_fold"].to_numpy()
        names = [f"f{k}" for k in sorted(set(fold[tr].tolist()))] + ["all"]
        segs = {
            name: self._segmenter(
                arm, man, split_res.key, name, tr & (fold != int(name[1:])) if name != "all" else tr
            )
            for name in names
        }
        which = [f"f{f}" if t else "all" for t, f in zip(tr.tolist(), fold.tolist(), strict=True)]
        morph = self._needs_morphology()

        def outline(folder: Path) -> None:
            from buscad.study.roi import outline_by_segmenter

            outline_by_segmenter(
                man,
                mode,
                folder,
                segs,
                which,
                jitter=cfg.segment.box_jitter,
                seed=cfg.seed,
                threads=cfg.segment.threads,
                morphology=morph,
            )

        res = self.runner.run(
            f"roi-{mode}-{_safe(arm.name)}",
            {
                "split": split_res.key,
                "mode": mode,
                "segmenters": {n: str(p.parent.name) for n, p in segs.items()},
                "jitter": cfg.segment.box_jitter if mode == "box" else None,
                "seed": cfg.seed,
                "morphology": morph,
                "v": ROI_VERSION,
            },
            outline,
        )
        self._roi_warnings(f"{mode} ({arm.name})", json.loads((res.path / "roi.json").read_text()))
        return Roi(mode, res, segs["all"])

    # --------------------------------------------------------------- audit
    def _audit(self, pooled: Manifest, data_keys: list[str]) -> StageResult:
        cfg = self.cfg

        def work(folder: Path) -> None:
            from buscad.data.audit.run import run_audit

            res = run_audit(
                pooled,
                folder / "audit",
                seed=cfg.seed,
                shortcut_warn_auc=cfg.audit.shortcut_warning_auc,
                cache_dir=self.run_dir / "cache" / "audit-descriptors",
                log=None,
            )
            from buscad.data.audit.masks import GEOMETRY_FEATURES, SIZE_FEATURES

            full = res.manifest.df.copy()
            for c in (*GEOMETRY_FEATURES, *SIZE_FEATURES):  # inputs of the shortcut references
                if c in res.flags:
                    full[c] = res.flags[c].to_numpy()
            kept, dropped = _apply_audit_policy(cfg, full)
            Manifest(kept, root=res.manifest.root, source=res.manifest.source).save(
                folder / "kept.csv"
            )
            atomic_write_table(dropped, folder / "dropped.csv")
            atomic_write_json(folder / "warnings.json", res.warnings)

        res = self.runner.run(
            "audit",
            {"data": data_keys, "audit": cfg.audit.model_dump(mode="json"), "seed": cfg.seed},
            work,
        )
        self.warnings += [
            f"audit: {w}" for w in json.loads((res.path / "warnings.json").read_text())
        ]
        dropped = pd.read_csv(res.path / "dropped.csv")
        if len(dropped):
            self.warnings.append(dropped_text(dropped))
        return res

    # --------------------------------------------------------------- split
    def _split(self, arm: Arm, audited: Manifest, audit_key: str) -> StageResult:
        cfg = self.cfg

        def work(folder: Path) -> None:
            from buscad.data.splits import assign_splits

            df = audited.df
            dev = audited.subset(df["cohort"].isin(arm.development).to_numpy())
            dev = assign_splits(
                dev,
                method="holdout",
                test_size=cfg.split.test_size,
                seed=cfg.seed,
                dup_groups=dev.df.get("dup_group"),
            )
            out = dev.df.copy()
            ext = df[df["cohort"].isin(arm.external)].copy()
            ext["split"] = "external"
            ext["group"] = (
                "ext_" + ext["dup_group"].astype(str) if "dup_group" in ext else ext["image_id"]
            )
            out = pd.concat([out, ext], ignore_index=True)
            out["eval_cohort"] = [
                arm.train_label
                if s == "train"
                else arm.test_label
                if s == "test"
                else arm.external_label(c)
                for s, c in zip(out["split"], out["cohort"], strict=True)
            ]
            tr = (out["split"] == "train").to_numpy()
            y = (out["label"] == "malignant").to_numpy().astype(int)
            groups = out["group"].astype(str).to_numpy()
            out["cv_fold"] = -1
            out["deep_fold"] = -1
            out.loc[tr, "cv_fold"] = _folds(y[tr], groups[tr], cfg.split.cv_folds, cfg.seed)
            out.loc[tr, "deep_fold"] = _folds(
                y[tr], groups[tr], cfg.deep.selection_folds, cfg.seed + 1
            )
            Manifest(out, root=audited.root, source=audited.source).save(folder / "manifest.csv")
            desc = out.groupby(["eval_cohort", "label"]).size().unstack(fill_value=0)
            desc["groups"] = out.groupby("eval_cohort")["group"].nunique()
            atomic_write_table(desc.reset_index(), folder / "split_summary.csv")

        return self.runner.run(
            f"split-{_safe(arm.name)}",
            {
                "audit": audit_key,
                "arm": arm.__dict__,
                "split": cfg.split.model_dump(),
                "seed": cfg.seed,
                "deep_folds": cfg.deep.selection_folds,
            },
            work,
        )

    # ---------------------------------------------------------------- deep
    def _deep(
        self, arm: Arm, man: Manifest, split_key: str, roi: Roi
    ) -> tuple[StageResult, StageResult | None]:
        """CV of every backbone, choice of the best, final fit, scores and features.

        Returns the final stage (``scores.csv``, ``features.parquet``, ``model``) and,
        when a model reads deep features, the fold-features stage: the features of
        every training row from each CV fold's CNN of the chosen backbone
        (``fold_features.parquet``: ``image_id``, ``cnn_fold`` = the deep fold that
        CNN left out, ``deep_0000`` ...).
        """
        cfg = self.cfg
        df = man.df
        train_rows = np.flatnonzero((df["split"] == "train").to_numpy())
        cv_keys: dict[str, list[str]] = {}
        cv_dirs: dict[str, list[Path]] = {}
        oof: dict[str, np.ndarray] = {}
        for b in cfg.deep.backbones:
            tc = _train_config(cfg, b, cfg.seed)
            oof[b] = np.full(len(df), np.nan)
            cv_keys[b] = []
            cv_dirs[b] = []
            for f in range(cfg.deep.selection_folds):
                fold_rows = train_rows[df["deep_fold"].to_numpy()[train_rows] == f]
                fit_rows = train_rows[df["deep_fold"].to_numpy()[train_rows] != f]

                def work(folder: Path, fit_rows=fit_rows, fold_rows=fold_rows, tc=tc) -> None:
                    from buscad.models.train import predict_scores, train_model

                    sub = man.subset(fit_rows)
                    sub.df["split"] = "train"
                    res = train_model(sub, tc, folder / "train")
                    s = predict_scores(res.model, man.subset(fold_rows), res.preprocessor)
                    atomic_write_table(
                        pd.DataFrame(
                            {"image_id": df["image_id"].iloc[fold_rows].to_numpy(), "score": s}
                        ),
                        folder / "oof.csv",
                    )

                r = self.runner.run(
                    f"deep-cv-{roi.tag(arm)}-{b}-f{f}",
                    {"split": split_key, "train": _train_cfg_dict(tc), "fold": f},
                    work,
                )
                cv_keys[b].append(r.key)
                cv_dirs[b].append(r.path)
                o = pd.read_csv(r.path / "oof.csv")
                pos = (
                    pd.Series(np.arange(len(df)), index=df["image_id"])
                    .loc[o["image_id"]]
                    .to_numpy()
                )
                oof[b][pos] = o["score"].to_numpy()
        # choose the backbone by pooled out-of-fold AUC on the training rows only
        from buscad.evaluate.delong import auc_ci

        y = (df["label"] == "malignant").to_numpy().astype(int)
        cv_table = []
        for b in cfg.deep.backbones:
            ok = ~np.isnan(oof[b][train_rows])
            r = auc_ci(y[train_rows][ok], oof[b][train_rows][ok])
            cv_table.append(
                {"backbone": b, "cv_auc": r.auc, "lo": r.lo, "hi": r.hi, "n": int(ok.sum())}
            )
        cv_df = pd.DataFrame(cv_table)
        best = str(
            cv_df.sort_values(["cv_auc", "backbone"], ascending=[False, True])["backbone"].iat[0]
        )
        tc = _train_config(cfg, best, cfg.seed)

        def final(folder: Path) -> None:
            from buscad.models.checkpoint import save_checkpoint
            from buscad.models.features import extract_features
            from buscad.models.train import predict_scores, train_model

            sub = man.subset(train_rows)
            sub.df["split"] = "train"
            res = train_model(sub, tc, folder / "train")
            save_checkpoint(
                res.model,
                folder / "model",
                {"arm": arm.name, "cv": cv_table},
                preprocessor=res.preprocessor,
            )
            scores = predict_scores(res.model, man, res.preprocessor)
            feats, _ = extract_features(res.model, man, res.preprocessor)
            out = pd.DataFrame({"image_id": df["image_id"].to_numpy(), "deep_final": scores})
            out["deep_oof"] = oof[best]
            atomic_write_table(out, folder / "scores.csv")
            atomic_write_table(
                feats.reset_index() if feats.index.name else feats, folder / "features.parquet"
            )
            atomic_write_table(cv_df, folder / "backbone_cv.csv")

        final_res = self.runner.run(
            f"deep-final-{roi.tag(arm)}",
            {"split": split_key, "train": _train_cfg_dict(tc), "cv": cv_keys, "best": best},
            final,
        )
        if not self._needs_fold_features():
            return final_res, None

        def fold_features(folder: Path) -> None:
            from buscad.models.checkpoint import load_checkpoint
            from buscad.models.features import extract_features
            from buscad.models.preprocess import Preprocessor

            sub = man.subset(train_rows)
            parts = []
            for f, stage_dir in enumerate(cv_dirs[best]):
                stem = stage_dir / "train" / "model"
                if not stem.with_suffix(".json").is_file():
                    raise RuntimeError(
                        f"{stem}.json missing: the CV fold {f} CNN of {best} kept no checkpoint"
                    )
                model, spec = load_checkpoint(stem)
                feats, _ = extract_features(
                    model, sub, Preprocessor.from_dict(spec["preprocessing"])
                )
                feats.insert(1, "cnn_fold", f)
                parts.append(feats)
            atomic_write_table(
                pd.concat(parts, ignore_index=True), folder / "fold_features.parquet"
            )

        folds_res = self.runner.run(
            f"deep-foldfeat-{roi.tag(arm)}",
            {"cv": cv_keys[best], "best": best, "v": FOLD_FEATURES_VERSION},
            fold_features,
        )
        return final_res, folds_res

    # ----------------------------------------------------------- radiomics
    def _radiomics(self, audited: Manifest, audit_key: str, roi: Roi) -> StageResult:
        cfg = self.cfg
        params_path = cfg.resolve(cfg.radiomics.params)

        def work(folder: Path) -> None:
            from buscad.radiomics.extract import extract_features, load_params

            params = load_params(params_path)
            res = extract_features(
                audited,
                params,
                cache_dir=self.run_dir / "cache" / "radiomics-features",
                n_jobs=min(2, os.cpu_count() or 1),
            )
            feats = res.features.copy()
            feats.index.name = "image_id"
            atomic_write_table(feats.reset_index(), folder / "features.parquet")
            atomic_write_json(folder / "failures.json", res.failures)

        params_hash = file_sha256(params_path) if params_path else "default"
        name = "radiomics" if roi.mode == "expert" else f"radiomics-roi-{roi.mode}"
        res = self.runner.run(name, {"audit": audit_key, "params": params_hash}, work)
        fails = json.loads((res.path / "failures.json").read_text())
        if fails:
            self.warnings.append(f"radiomics: {len(fails)} image(s) skipped, e.g. {fails[0]}")
        return res

    # -------------------------------------------------------------- medsam
    def _medsam(self, data: Manifest, data_key: str, roi: Roi) -> StageResult:
        """The ``medsam`` features of every row (its outline under ``roi``): ``features.parquet``.

        Embeddings come from the on-disk cache (``medsam.cache``; key: the image's
        SHA-256 under the encoder graph's SHA-256), so only unseen images are encoded.
        """
        from buscad.segment.medsam_features import FEATURES_VERSION, MedSAMFeatures

        cfg = self.cfg
        folder = self._medsam_folder()
        fx = MedSAMFeatures(folder, cfg.resolve(cfg.medsam.cache), threads=cfg.medsam.threads)

        def work(out: Path) -> None:
            table, failures = fx.table(data)
            atomic_write_table(table, out / "features.parquet")
            atomic_write_json(out / "failures.json", failures)

        name = "medsam" if roi.mode == "expert" else f"medsam-roi-{roi.mode}"
        res = self.runner.run(
            name, {"data": data_key, "encoder": fx.model_hash, "v": FEATURES_VERSION}, work
        )
        fails = json.loads((res.path / "failures.json").read_text())
        if fails:
            self.warnings.append(
                f"medsam: {len(fails)} image(s) without features (not scored), e.g. {fails[0]}"
            )
        return res

    # ----------------------------------------------------------- classical
    def _classical(
        self,
        arm: Arm,
        man: Manifest,
        split_res: StageResult,
        deep_res: StageResult | None,
        radiomics_res: StageResult | None,
        audit_res: StageResult,
        roi: Roi,
        folds_res: StageResult | None = None,
        medsam_res: StageResult | None = None,
    ) -> StageResult:
        cfg = self.cfg

        def work(folder: Path) -> None:
            table = self._feature_table(man, deep_res, radiomics_res, audit_res, medsam_res)
            fold_feats = (
                pd.read_parquet(folds_res.path / "fold_features.parquet")
                if folds_res is not None
                else None
            )
            out, notes, fitted, reader_models, gaps = fit_and_predict(
                cfg, man.df, table, fold_features=fold_feats
            )
            fusion = fusion_summary(out, fitted, arm.train_label)
            notes += fusion.get("notes", [])
            atomic_write_json(folder / "fusion.json", fusion)
            notes += export_models(fitted, folder / "export")
            atomic_write_table(out, folder / "predictions.csv")
            atomic_write_table(gaps, folder / "input_gaps.csv")
            atomic_write_json(folder / "notes.json", notes)
            atomic_write_json(folder / "reader_models.json", reader_models)

        key = {
            "split": split_res.key,
            "deep": deep_res.key if deep_res else None,
            "fold_features": folds_res.key if folds_res else None,
            "radiomics": radiomics_res.key if radiomics_res else None,
            "audit": audit_res.key,
            "models": cfg.models,
            "radiomics_cfg": cfg.radiomics.model_dump(mode="json"),
            "clinical": cfg.clinical.model_dump(),
            "integrated": cfg.integrated.model_dump(mode="json"),
            "cv": cfg.split.cv_folds,
            "seed": cfg.seed,
            "export_version": MODELS_EXPORT_VERSION,
        }
        if roi.res is not None:
            key["roi"] = roi.res.key
        if medsam_res is not None:  # absent from the key otherwise: earlier runs' caches hold
            key["medsam"] = medsam_res.key
        res = self.runner.run(f"models-{roi.tag(arm)}", key, work)
        self.warnings += [
            f"{roi.label(arm)}: {n}" for n in json.loads((res.path / "notes.json").read_text())
        ]
        return res

    def _feature_table(
        self, man: Manifest, deep_res, radiomics_res, audit_res, medsam_res=None
    ) -> pd.DataFrame:
        from buscad.study.roi import ROI_COLUMNS

        df = man.df.set_index("image_id")
        parts = [df.drop(columns=[c for c in ROI_COLUMNS if c in df])]
        if deep_res is not None:
            sc = pd.read_csv(deep_res.path / "scores.csv").set_index("image_id")
            parts.append(sc)
            feats = pd.read_parquet(deep_res.path / "features.parquet")
            feats = feats.set_index("image_id") if "image_id" in feats else feats
            parts.append(feats)
        if radiomics_res is not None:
            rf = pd.read_parquet(radiomics_res.path / "features.parquet").set_index("image_id")
            parts.append(rf.reindex(df.index))
        if medsam_res is not None:
            mf = pd.read_parquet(medsam_res.path / "features.parquet").set_index("image_id")
            parts.append(mf.reindex(df.index.astype(str)).set_axis(df.index, axis=0))
        table = pd.concat(parts, axis=1)
        return table.loc[df.index]

    # ----------------------------------------------------------- evaluate
    def _evaluate(
        self,
        arm: Arm,
        cls_res: StageResult,
        man: Manifest,
        audit_res: StageResult,
        split_res: StageResult,
        roi: Roi,
    ) -> StageResult:
        cfg = self.cfg

        def work(folder: Path) -> None:
            from buscad.evaluate import evaluate_predictions
            from buscad.labels import READS_READER
            from buscad.study.bottomline import phantom_cohorts, synthetic_text

            pred = pd.read_csv(cls_res.path / "predictions.csv")
            reader = cfg.clinical.reader_column
            details = {
                n: {"reader's BI-RADS": f"{READS_READER} ('{reader}') as an input"}
                for n in _reader_models(cls_res)
            }
            model_cols = [c for c in pred.columns if c not in ("case_id", "label", "cohort", "age")]
            gaps = cls_res.path / "input_gaps.csv"  # per model, the inputs each case lacks
            ev = evaluate_predictions(
                pred,
                model_cols,
                "label",
                "cohort",
                id_col="case_id",
                train_cohort=arm.train_label,
                threshold_rule=cfg.evaluation.threshold,
                ci_method=cfg.evaluation.ci,
                seed=cfg.seed,
                covariates=["age"] if "age" in pred and pred["age"].notna().any() else None,
                birads_columns=[READER_MODEL] if READER_MODEL in model_cols else (),
                input_gaps=pd.read_csv(gaps) if gaps.is_file() else None,
            )
            ev.write(
                folder / "evaluation",
                title=f"{cfg.name}: {roi.label(arm)}",
                audit_summary=json.loads((audit_res.path / "audit" / "summary.json").read_text()),
                split_description=(
                    f"Grouped (patient ∪ near-duplicate group) stratified {1 - cfg.split.test_size:.0%}:"
                    f"{cfg.split.test_size:.0%} split of {', '.join(arm.development)}; training-cohort "
                    f"predictions are out-of-fold ({cfg.split.cv_folds}-fold grouped CV; the CNN and "
                    f"the models on its features {cfg.deep.selection_folds}-fold, each fold's "
                    "features from the CNN trained without it). "
                    f"External: {', '.join(arm.external) or 'none'}."
                    + (
                        ""
                        if roi.mode == "expert"
                        else f" Lesion outlines: roi {roi.mode} (segmenter {cfg.segment.model}, "
                        "applied to every row)."
                    )
                ),
                seed=cfg.seed,
                model_details=details,
                notice=synthetic_text(
                    phantom_cohorts(man.df, [c.name for c in cfg.cohorts if c.phantom is not None]),
                    list(dict.fromkeys(man.df["cohort"].astype(str))),
                    reader=READER_MODEL in model_cols,
                ),
            )
            atomic_write_table(ev.metrics, folder / "metrics.csv")

        return self.runner.run(
            f"evaluate-{roi.tag(arm)}",
            {
                "predictions": cls_res.key,
                "eval": cfg.evaluation.model_dump(),
                "v": EVALUATE_VERSION,
            },
            work,
        )

    # ----------------------------------------------------------- warnings
    def _shortcut_warnings(self, metrics: pd.DataFrame) -> None:
        """One warning per cohort listing the models that do not beat a shortcut by more than 0.02."""
        if not {"model", "cohort", "auc"} <= set(metrics.columns):
            return
        for (arm, cohort), g in metrics.groupby(["arm", "cohort"], sort=False):
            sc = g[g["model"].isin(SHORTCUT_MODELS) & g["auc"].notna()]
            if sc.empty:
                continue
            best = sc.loc[sc["auc"].idxmax()]
            real = g[~g["model"].isin((*SHORTCUT_MODELS, READER_MODEL)) & g["auc"].notna()]
            close = real[real["auc"] - best["auc"] <= 0.02]
            if len(close):
                from buscad.labels import model_label

                names = ", ".join(f"{model_label(r.model)} {r.auc:.3f}" for r in close.itertuples())
                self.warnings.append(
                    f"{arm} / {cohort}: {model_label(best['model'])} reaches AUC "
                    f"{best['auc']:.3f}; "
                    f"these models do not beat it by more than 0.02, so the annotations may explain "
                    f"their results: {names}"
                )

    def _bundle(
        self,
        arm: Arm,
        man: Manifest,
        deep_res: StageResult | None,
        cls_res: StageResult,
        ev_res: StageResult,
        roi: Roi,
        metrics: pd.DataFrame,
    ) -> Path | None:
        """Write ``RUN_DIR/bundle``: the deep model (calibrated on out-of-fold training scores)
        and every exported classical/fusion model, each with its out-of-fold Youden threshold."""
        if deep_res is None:
            return None
        cfg = self.cfg

        def work(folder: Path) -> None:
            from buscad.bundle.bundle import write_bundle
            from buscad.bundle.safety import training_from_rows
            from buscad.evaluate.metrics import youden_threshold

            sc = pd.read_csv(deep_res.path / "scores.csv").set_index("image_id")
            tr = man.df[man.df["split"] == "train"]
            y = (tr["label"] == "malignant").to_numpy().astype(int)
            card = ev_res.path / "evaluation" / "model_card.md"
            m = metrics[metrics["arm"] == arm.name]
            if "roi" in m:
                m = m[m["roi"] == roi.mode].drop(columns=["roi"])
            pred = pd.read_csv(cls_res.path / "predictions.csv")
            ptr = pred[pred["cohort"] == arm.train_label]
            reading = _reader_models(cls_res)
            classical = {}
            for f in sorted((cls_res.path / "export").glob("*.json")):
                oof = ptr[f.stem].to_numpy(float)
                ok = ~np.isnan(oof)
                classical[f.stem] = {
                    "stem": f.with_suffix(""),
                    "threshold": float(youden_threshold(ptr["label"].to_numpy()[ok], oof[ok])),
                    "reads_reader": f.stem in reading,
                    "oof": oof[ok],  # for the study's checks (buscad.bundle.safety.model_flags)
                    "y": ptr["label"].to_numpy()[ok],
                }
            notes = json.loads((cls_res.path / "notes.json").read_text())
            params = None
            if "radiomics" in classical:
                from buscad.radiomics.extract import load_params

                params = load_params(cfg.resolve(cfg.radiomics.params))
            write_bundle(
                folder / "bundle",
                deep_res.path / "model",
                sc.loc[tr["image_id"], "deep_oof"].to_numpy(),
                y,
                name=f"{cfg.name} ({arm.name})",
                model_card=card.read_text() if card.exists() else "",
                metrics=m.drop(columns=["arm"]).round(4).to_dict(orient="records"),
                provenance={
                    "study": cfg.name,
                    "arm": arm.name,
                    "seed": cfg.seed,
                    "backbone_cv": pd.read_csv(deep_res.path / "backbone_cv.csv").to_dict(
                        orient="records"
                    ),
                },
                cam_method=cfg.deep.gradcam,
                classical=classical,
                radiomics_params=params,
                configured={
                    n: next((x for x in notes if x.lower().startswith(n.lower() + " ")), "")
                    for n in cfg.models
                    if n != "deep"
                },
                segmenter=seg_path,
                roi=roi.mode,
                reader_column=cfg.clinical.reader_column,
                training=training_from_rows(
                    tr,
                    [c.name for c in cfg.cohorts if c.phantom is not None],
                    json.loads((deep_res.path / "model.json").read_text(encoding="utf-8")),
                ),
                **_ood_reference(man, deep_res.path, self.warnings.append),
                headline=_headline(cls_res),
                medsam=self._medsam_folder() if self._needs_medsam() else None,
            )

        seg_path = roi.segmenter if roi.segmenter is not None else cfg.resolve(cfg.segment.model)
        if seg_path is None and cfg.segment.train is not None:
            # expert masks with segment.train: the bundle still gets the segmenter trained on all
            # the arm's training rows, so predict and the app outline lesions without a mask
            tr_rows = (man.df["split"] == "train").to_numpy()
            seg_path = self._segmenter(arm, man, self._splits[arm.name].key, "all", tr_rows)
        key: dict[str, Any] = {
            "deep": deep_res.key,
            "models": cls_res.key,
            "eval": ev_res.key,
            "bundle_version": BUNDLE_VERSION,
        }
        if seg_path is not None:
            from buscad.study.roi import segmenter_record

            key["segmenter"] = segmenter_record(seg_path)["json_sha256"]
            key["roi"] = roi.mode
        res = self.runner.run(f"bundle-{roi.tag(arm)}", key, work)
        import shutil

        out = self.run_dir / "bundle"
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(res.path / "bundle", out)
        from buscad.bundle.safety import flags_text

        doc = json.loads((out / "bundle.json").read_text(encoding="utf-8"))
        self.bundle_flags = list(doc.get("flags") or [])
        text = flags_text(self.bundle_flags, (doc.get("headline_model") or {}).get("model"))
        if text:  # buscad.bundle.safety.study_flags: the CNN's calls are withheld
            self.warnings.append(text)
        return out

    def _gallery(
        self,
        arm: Arm,
        man: Manifest,
        deep_res: StageResult | None,
        cls_res: StageResult,
        roi: Roi,
    ) -> pd.DataFrame:
        """Grad-CAM galleries of correct and incorrect non-training cases (``man``: the arm's split).

        Returns one row per case shown: ``image_id, cohort, label, score, threshold, kind``
        (correct / incorrect) and ``overlay`` (the Grad-CAM overlay PNG).
        """
        cfg = self.cfg
        if deep_res is None or cfg.gallery_size == 0 or "deep" not in cfg.models:
            return pd.DataFrame()

        def work(folder: Path) -> None:
            from buscad.explain.cam import explain_manifest
            from buscad.models.checkpoint import load_checkpoint
            from buscad.models.preprocess import Preprocessor

            model, spec = load_checkpoint(deep_res.path / "model")
            pre = Preprocessor.from_dict(spec["preprocessing"])
            pred = pd.read_csv(cls_res.path / "predictions.csv")
            thr = _youden(pred, arm)
            test = pred[pred["cohort"] != arm.train_label].copy()
            test["correct"] = (test["deep"] >= thr).astype(int) == test["label"]
            cases = []
            for kind, rows in (
                ("correct", test[test["correct"]]),
                ("incorrect", test[~test["correct"]]),
            ):
                rows = rows.sort_values("case_id").head(max(1, cfg.gallery_size // 2))
                if rows.empty:
                    continue
                sub = man.subset(man.df["image_id"].isin(rows["case_id"]).to_numpy())
                explain_manifest(
                    model, sub, pre, folder / kind, methods=(cfg.deep.gradcam,), gallery=True
                )
                ex = pd.read_csv(folder / kind / "explanations.csv").set_index("image_id")
                for r in rows.itertuples(index=False):
                    if r.case_id in ex.index:
                        cases.append(
                            {
                                "image_id": r.case_id,
                                "cohort": r.cohort,
                                "label": "malignant" if int(r.label) == 1 else "benign",
                                "score": float(r.deep),
                                "threshold": float(thr),
                                "kind": kind,
                                "overlay": f"{kind}/{ex.loc[r.case_id, 'path']}",
                            }
                        )
            atomic_write_table(
                pd.DataFrame(
                    cases,
                    columns=[
                        "image_id",
                        "cohort",
                        "label",
                        "score",
                        "threshold",
                        "kind",
                        "overlay",
                    ],
                ),
                folder / "cases.csv",
            )

        res = self.runner.run(
            f"gallery-{roi.tag(arm)}",
            {
                "deep": deep_res.key,
                "pred": cls_res.key,
                "n": cfg.gallery_size,
                "method": cfg.deep.gradcam,
                "v": GALLERY_VERSION,
            },
            work,
        )
        return pd.read_csv(res.path / "cases.csv").assign(
            overlay=lambda d: [str(res.path / o) for o in d["overlay"]]
        )


def _with_outlines(man: Manifest, outlined: Manifest) -> Manifest:
    """The arm's rows with ``mask_path`` and the outline columns of the outline stage."""
    from buscad.data.audit.masks import GEOMETRY_FEATURES
    from buscad.study.roi import MORPH_COLUMNS, ROI_COLUMNS

    src = outlined.df.set_index("image_id")
    df = man.df.copy()
    for c in ("mask_path", *GEOMETRY_FEATURES, *ROI_COLUMNS, *MORPH_COLUMNS):
        if c in src:
            v = src[c].reindex(df["image_id"]).to_numpy()
            if c == "mask_path":
                v = [
                    ";".join(str(outlined.resolve(p)) for p in x.split(";") if p)
                    if isinstance(x, str) and x
                    else x
                    for x in v
                ]
            df[c] = v
    return Manifest(df, root=man.root, source=man.source)


def run_study(
    config: StudyConfig | str | os.PathLike[str],
    run_dir: str | os.PathLike[str] | None = None,
    stream: TextIO | None = None,
) -> StudyResult:
    """Load a config (if a path), check it whole, and run the study into ``run_dir``.

    ``run_dir`` defaults to ``runs/<name>``. Nothing is written (not even ``run_dir``)
    when the check (:func:`buscad.study.check.require_valid`) finds a problem: it
    raises :class:`~buscad.errors.ConfigProblems` listing every one. Its notes (e.g.
    no reader column) are printed and join the run's warnings.
    """
    from buscad.config import load_config
    from buscad.study.check import require_valid

    cfg = config if isinstance(config, StudyConfig) else load_config(config)
    notes = require_valid(cfg).notes
    out = stream or sys.stderr
    for n in notes:
        print(f"note: {n}", file=out, flush=True)
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / cfg.name
    run = StudyRun(cfg, run_dir, stream=out)
    run.warnings.extend(notes)
    return run.run()
