"""The study runner: one YAML config -> audit, grouped split, deep models, radiomics, classical and fusion models, statistics, galleries, report and model bundle.

Owns: study arms and cohorts, stage caching (stages), lesion outlines per ROI mode (roi: expert
masks or the segmenter's), model fitting (fit), the runner, the whole-config check before any stage
(check), the config a user starts from (template: ``buscad study init``) and ``buscad study``. May import every layer below it: data, models, radiomics, explain, classical, evaluate, report and bundle; never reader or serve.

The study runner: one config reproduces a whole study, resumably and without leakage.

Flow (each step a cached stage of :class:`buscad.stages.StageRunner`, keyed by
the hash of its inputs, so a rerun with nothing changed is instant and a killed
run resumes at the stage it was in)::

    check (every file, backbone and column the config names; nothing runs on a problem)
    ─► cohorts (manifests or phantoms) ─► audit (duplicates, overlays, mask problems,
    shortcuts) + audit policy ─► grouped split (patient ∪ near-duplicate group):
    development cohorts → train / internal test, external cohorts → external
    ─► per ROI mode (``roi: expert | auto | box``; the segmenter's outlines replace
    the masks for every stage below):
      ├─ deep: each backbone fine-tuned in grouped K-fold CV on the training rows
      │        (out-of-fold AI scores) → best backbone by CV AUC (never a test
      │        cohort) → refit on all training rows → scores + penultimate
      │        features for every row
      ├─ radiomics: pyradiomics features of the image + mask (original and
      │        perturbed masks for the ICC filter), cached per image
      └─ classical: radiomics (ICC → z-score → Spearman → LASSO → rad-score),
               DLR, clinical, US (lexicon), CLDLR, outline (geometry, smoothed
               shape and echo ratios of the outline), integrated (mean of the
               models' logits, or stacking weights learnt out-of-fold), and the
               audit's shortcut references (mask geometry alone, image size alone)
    ─► predictions of every model on every cohort (training rows out-of-fold)
    ─► statistics (buscad.evaluate), Grad-CAM galleries, one HTML report

Honesty rules enforced here: everything that is fitted (feature selection,
scalers, imputers, thresholds, backbone choice, stacking weights) sees training
rows only; the training cohort's reported predictions are out-of-fold; the
threshold is chosen on those and applied unchanged elsewhere; external cohorts
are never used to fit or choose anything.
"""

from __future__ import annotations

from buscad._lazy import lazy_exports

#: Public name -> defining module, imported on first use (PEP 562).
_LAZY = {
    "Arm": "buscad.study.cohorts",
    "MORPH_COLUMNS": "buscad.study.roi",
    "Roi": "buscad.study.runner",
    "outline_manifest": "buscad.study.roi",
    "BUNDLE_VERSION": "buscad.study.runner",
    "CACHE_VERSION": "buscad.study.stages",
    "DEEP_FEATURES": "buscad.study.fit",
    "MODELS_EXPORT_VERSION": "buscad.study.fit",
    "INTEGRATED_WITHOUT_READER": "buscad.study.fit",
    "READER_MODEL": "buscad.study.fit",
    "SHORTCUT_MODELS": "buscad.study.fit",
    "StageResult": "buscad.study.stages",
    "StageRunner": "buscad.study.stages",
    "StudyResult": "buscad.study.runner",
    "StudyRun": "buscad.study.runner",
    "export_models": "buscad.study.fit",
    "fit_and_predict": "buscad.study.fit",
    "run_study": "buscad.study.runner",
    "study_arms": "buscad.study.cohorts",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
