"""Per-image inputs of the external-validation protocol (benchmarks/external.py), cached.

Every family is one Parquet file keyed by ``image_id`` under ``<out>/features/``:
it is computed once for the pooled BUSI + BrEaST rows that survive the audit and
reused by every candidate model. Nothing here sees a label.

Families
--------
geometry     the audit's mask geometry and image size (inputs of the shortcut references)
morph        buscad.segment.morphology measures of the expert outline
shape        the outline measured after smoothing it (style-robust shape; see ``smooth_shape``)
echo         intensity ratios a sonographer reads (lesion vs surrounding fat/glandular ring,
             posterior region), each a ratio or a z-score inside the image, so gain-free
deep_<bb>_m<margin>_s<size>
             frozen ImageNet EfficientNet-Lite features of the ROI crop (box + margin),
             averaged over the crop and its mirror image (test-time augmentation); columns
             ``g_*`` are the global average pool, ``m_*`` the mask-guided pool (features
             averaged over the lesion's pixels only)
radiomics    pyradiomics 2D features with configs/radiomics.yaml (buscad.radiomics)
medsam       LiteMedSAM's image embedding mean-pooled inside the expert outline, in a ring
             around it and in the posterior band below it (buscad.segment.medsam_features;
             768 columns); embeddings from the on-disk cache (key: image SHA-256 under the
             encoder graph's SHA-256), the packaged checkpoint converted once when missing
medsam_max   the same regions max-pooled (cells at least half inside; an ablation)

Outline sources
---------------
``expert`` (default): every outline-dependent family reads the dataset's expert mask.
``box`` (:func:`box_outlines`, :func:`build_box`): the outline a clinician gets by
drawing a box, i.e. zero-shot LiteMedSAM (float encoder, nothing trained; the
embedding read from the on-disk cache) prompted with the expert mask's bounding
box, the component of ``sigmoid(logit) > 0.5`` that overlaps the box most, holes
filled (:func:`buscad.segment.infer.box_candidate`, as ``buscad predict`` draws
it). Where that is empty the box's inscribed ellipse stands in (counted). The
outline families (``OUTLINE_FAMILIES`` and ``geometry``) are recomputed from it
under ``<out>/outlines-box``; the deep families keep their crop, which is the box
(the expert mask's bounding box plus margin), so only their ``g_*`` columns are
read in box mode (``m_*`` pools inside the expert outline).

``auto`` (:func:`auto_outlines_part`, :func:`build_auto`): the outline a clinician
gets without drawing anything, i.e. ``buscad segment detector``'s lesion detector
(its recommended settings, on LiteMedSAM's cached float embedding) proposes boxes,
zero-shot LiteMedSAM outlines them and the top-ranked kept candidate is read, as
``buscad predict`` without a mask reads it. Every row is outlined by a detector that
never saw it: ``auto-oof`` by the detector trained on the other grouped folds of its
own cohort (BUSI with its normal images), ``auto-x`` by the detector trained on the
whole other cohort. A row with no kept candidate has no outline ("no lesion found"):
``buscad predict`` withholds its call, and so does the protocol. The outline families
and every cropped deep family (the crop is the outline's box plus margin) are
recomputed from the outlines under ``<out>/outlines-auto-oof`` and
``<out>/outlines-auto-x``; the whole-image deep family is unchanged.

Data: BUSI (Al-Dhabyani et al., Data in Brief 28:104863, 2020, CC0) and
BrEaST-Lesions_USG (Pawlowska et al., Sci Data 11:148, 2024, CC BY 4.0), read in place.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

import buscad._compat  # noqa: F401
from buscad.data.io import read_image, read_mask, to_uint8
from buscad.data.manifest import Manifest
from buscad.segment.descriptors import echo_features, smooth_shape
from buscad.utils import atomic_write_table

#: (backbone, margin, input size) of the frozen-feature families.
DEEP_VARIANTS: tuple[tuple[str, float | None, int], ...] = (
    ("efficientnet_lite0", None, 224),  # the whole image (BASELINE.md's first line)
    ("efficientnet_lite0", 0.1, 224),
    ("efficientnet_lite0", 0.5, 224),
    ("efficientnet_lite0", 0.1, 320),
    ("efficientnet_lite1", 0.1, 240),
    ("efficientnet_lite1", 0.5, 240),
    ("efficientnet_lite2", 0.1, 260),
    ("efficientnet_lite2", 0.5, 260),
)
#: Variants whose crop is contrast-normalised first (CLAHE, OpenCV, clip 2.0, 8x8 tiles):
#: a per-image gain/contrast harmonisation across scanners.
NORM_VARIANTS: tuple[tuple[str, float | None, int], ...] = (
    ("efficientnet_lite0", 0.1, 224),
    ("efficientnet_lite0", 0.5, 224),
)


def deep_family(backbone: str, margin: float | None, size: int, norm: bool = False) -> str:
    """Name of a frozen-feature family (margin None: the whole image)."""
    where = "whole" if margin is None else f"m{margin:g}"
    return f"deep_{backbone.replace('efficientnet_', '')}_{where}_s{size}" + (
        "_clahe" if norm else ""
    )


# ------------------------------------------------------------------ reading
def _load(man: Manifest, i: int) -> tuple[np.ndarray, np.ndarray]:
    gray, _ = read_image(man.image_path(i))
    mask = read_mask(man.mask_paths(i), gray.shape)
    g = to_uint8(gray) if gray.dtype != np.uint8 else gray
    return g, mask.astype(bool)


# -------------------------------------------------------------------- deep
def _deep_table(
    man: Manifest, backbone: str, margin: float | None, size: int, norm: bool = False
) -> pd.DataFrame:
    import torch

    from buscad.models.preprocess import Preprocessor, resize, roi_box
    from buscad.models.registry import create_backbone

    torch.manual_seed(0)
    model = create_backbone(backbone, "imagenet").eval()
    trunk = model.backbone  # timm EfficientNet with the classifier removed
    pre = Preprocessor(
        roi="roi", margin=margin or 0.0, input_size=size, mean=(0.5,) * 3, std=(0.5,) * 3
    )
    ids, g_rows, m_rows = [], [], []
    batch_x, batch_m, batch_id = [], [], []

    def flush() -> None:
        if not batch_x:
            return
        x = pre(np.stack(batch_x))
        mk = torch.from_numpy(np.stack(batch_m)).float()[:, None]
        with torch.no_grad():
            g_sum = 0
            m_sum = 0
            for flip in (False, True):
                xi = torch.flip(x, dims=[3]) if flip else x
                mi = torch.flip(mk, dims=[3]) if flip else mk
                fmap = trunk.forward_features(xi)  # (N, 1280, h, w) after conv_head + bn2
                g_sum = g_sum + fmap.mean(dim=(2, 3))
                mm = torch.nn.functional.interpolate(mi, size=fmap.shape[2:], mode="area")
                m_sum = m_sum + (fmap * mm).sum(dim=(2, 3)) / mm.sum(dim=(2, 3)).clamp_min(1e-6)
        g_rows.append((g_sum / 2).numpy())
        m_rows.append((m_sum / 2).numpy())
        ids.extend(batch_id)
        batch_x.clear()
        batch_m.clear()
        batch_id.clear()

    for i in range(len(man)):
        g, mask = _load(man, i)
        y0, y1, x0, x1 = (0, g.shape[0], 0, g.shape[1]) if margin is None else roi_box(mask, margin)
        crop = resize(g[y0:y1, x0:x1], size)
        if norm:
            crop = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(crop)
        batch_x.append(crop)
        batch_m.append(resize((mask[y0:y1, x0:x1] * 255).astype(np.uint8), size) / 255.0)
        batch_id.append(man.df["image_id"].iat[i])
        if len(batch_x) == 32:
            flush()
    flush()
    G, M = np.concatenate(g_rows), np.concatenate(m_rows)
    cols = [f"g_{j:04d}" for j in range(G.shape[1])] + [f"m_{j:04d}" for j in range(M.shape[1])]
    t = pd.DataFrame(np.hstack([G, M]).astype(np.float32), columns=cols)
    t.insert(0, "image_id", ids)
    return t


# ---------------------------------------------------------------- families
def _per_image(man: Manifest, fn) -> pd.DataFrame:
    rows = []
    for i in range(len(man)):
        g, mask = _load(man, i)
        rows.append({"image_id": man.df["image_id"].iat[i], **fn(g, mask)})
    return pd.DataFrame(rows)


def _morph(g: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    from buscad.segment.morphology import describe

    d = describe(mask).as_dict()
    return {
        f"morph_{k}": float(v)
        for k, v in d.items()
        if isinstance(v, (int, float))
        and v is not None
        and not k.endswith("mm2")
        and not k.endswith("_mm")
    }


def _radiomics(man: Manifest, out: Path, jobs: int = 2) -> pd.DataFrame:
    from buscad.radiomics.extract import extract_features, load_params

    params = load_params(Path(__file__).resolve().parents[1] / "configs" / "radiomics.yaml")
    res = extract_features(man, params, cache_dir=out / "radiomics-cache", n_jobs=jobs)
    return res.features.reset_index() if "image_id" not in res.features else res.features


def _medsam(man: Manifest, pool: str = "mean", jobs: int = 2) -> pd.DataFrame:
    from buscad.segment.medsam_convert import ensure_converted
    from buscad.segment.medsam_features import MedSAMFeatures

    folder = ensure_converted()  # converted once (PyTorch); the graph loads only for a miss
    table, failures = MedSAMFeatures(folder, threads=jobs).table(man, progress=False, pool=pool)
    if failures:
        print(f"medsam: {len(failures)} row(s) without features, e.g. {failures[0]}")
    return table


def families() -> list[str]:
    """Every family :func:`build` computes (besides ``geometry``, read from the audit)."""
    deep = [deep_family(*v) for v in DEEP_VARIANTS]
    return ["morph", "shape", "echo", "radiomics", "medsam", "medsam_max", *deep] + [
        deep_family(*v, True) for v in NORM_VARIANTS
    ]


def _geometry(g: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    from buscad.data.geometry import GEOMETRY_FEATURES, mask_geometry

    d = mask_geometry(mask)
    return {k: float(d[k]) for k in GEOMETRY_FEATURES}


def build(
    man: Manifest, out: Path, families: list[str] | None = None, log=print, threads: int = 2
) -> dict:
    """Compute (or reuse) every family's table; returns ``family -> seconds``.

    ``geometry`` (:func:`buscad.data.geometry.mask_geometry` of the manifest's
    outline) is computed only when ``families`` names it: the expert run reads the
    audit's. ``threads``: radiomics processes and ONNX Runtime threads.
    """
    folder = out / "features"
    folder.mkdir(parents=True, exist_ok=True)
    jobs = {
        "geometry": lambda: _per_image(man, _geometry),
        "morph": lambda: _per_image(man, _morph),
        "shape": lambda: _per_image(man, lambda g, m: smooth_shape(m)),
        "echo": lambda: _per_image(man, echo_features),
        "medsam": lambda: _medsam(man, jobs=threads),
        "medsam_max": lambda: _medsam(man, "max", jobs=threads),
        "radiomics": lambda: _radiomics(man, out, threads),
    }
    for bb, margin, size in DEEP_VARIANTS:
        jobs[deep_family(bb, margin, size)] = lambda bb=bb, margin=margin, size=size: _deep_table(
            man, bb, margin, size
        )
    for bb, margin, size in NORM_VARIANTS:
        jobs[deep_family(bb, margin, size, True)] = lambda bb=bb, margin=margin, size=size: (
            _deep_table(man, bb, margin, size, True)
        )
    times = {}
    for name, fn in jobs.items():
        if (families and name not in families) or (name == "geometry" and not families):
            continue
        path = folder / f"{name}.parquet"
        if path.is_file():
            continue
        t0 = time.perf_counter()
        table = fn()
        atomic_write_table(table, path)
        times[name] = round(time.perf_counter() - t0, 1)
        log(f"features {name}: {table.shape} in {times[name]} s")
    return times


#: Families computed from the outline (recomputed for every outline source but ``expert``).
OUTLINE_FAMILIES: tuple[str, ...] = (
    "geometry",
    "morph",
    "shape",
    "echo",
    "medsam",
    "medsam_max",
    "radiomics",
)


def outline_dir(out: Path, source: str) -> Path:
    """Root of an outline source's tables (``out`` itself for the expert outlines)."""
    return out if source == "expert" else out / f"outlines-{source}"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice ``2|A∩B| / (|A| + |B|)`` of two boolean masks (1 when both are empty)."""
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def box_outlines(man: Manifest, out: Path, threads: int = 1, log=print) -> Manifest:
    """Zero-shot LiteMedSAM outlines prompted with each expert mask's bounding box.

    Writes one PNG per row under ``outline_dir(out, "box") / "masks"`` and
    ``outlines.csv`` (``image_id``, ``cohort``, ``dice`` against the expert mask,
    ``iou_pred`` from LiteMedSAM's IoU head, ``fallback`` where the outline was empty
    and the box's inscribed ellipse stands in, ``decode_ms``). Cached: a second call
    reads the CSV. Embeddings come from the on-disk cache
    (:func:`buscad.segment.medsam.default_cache`), read-only; a missing one is
    computed in memory and not stored.

    Returns
    -------
    Manifest
        ``man`` with ``mask_path`` pointing at the LiteMedSAM outlines.
    """
    from buscad.errors import ModelFileError
    from buscad.segment.base import mask_box, sigmoid
    from buscad.segment.baseline import box_ellipse
    from buscad.segment.infer import box_candidate
    from buscad.segment.medsam import EmbeddingCache, MedSAM, gray_uint8
    from buscad.segment.medsam_convert import ensure_converted

    root = outline_dir(out, "box")
    masks = root / "masks"
    table = root / "outlines.csv"
    ids = man.df["image_id"].astype(str).tolist()
    paths = [str((masks / f"{i}.png").resolve()) for i in ids]
    if not table.is_file():
        masks.mkdir(parents=True, exist_ok=True)
        sam = MedSAM(ensure_converted(), threads=threads, cache_size=0)
        cache = EmbeddingCache(None, sam.model_hash)
        rows, missed = [], 0
        t0 = time.perf_counter()
        for i in range(len(man)):
            g, truth = _load(man, i)
            gray = gray_uint8(g)
            try:
                emb = cache.get(gray)
            except ModelFileError:
                emb, missed = sam.embed(gray), missed + 1
            box = mask_box(truth)
            t1 = time.perf_counter()
            logit, iou = sam.decode(emb, box)
            cand = box_candidate(sigmoid(logit), box, 0.5, iou)
            ms = (time.perf_counter() - t1) * 1e3
            mask = cand.mask
            fallback = not mask.any()
            if fallback:
                mask = box_ellipse(box, truth.shape)
            cv2.imwrite(paths[i], mask.astype(np.uint8) * 255)
            rows.append(
                {
                    "image_id": ids[i],
                    "cohort": man.df["cohort"].iat[i],
                    "dice": dice(mask, truth),
                    "iou_pred": iou,
                    "fallback": fallback,
                    "decode_ms": ms,
                }
            )
        atomic_write_table(pd.DataFrame(rows), table)
        log(
            f"box outlines: {len(rows)} in {time.perf_counter() - t0:.0f} s "
            f"({missed} embeddings not cached, computed)"
        )
    return man.with_columns(mask_path=paths)


def build_box(man: Manifest, out: Path, threads: int = 1, log=print) -> dict:
    """:func:`box_outlines` then every outline family recomputed from them."""
    box = box_outlines(man, out, threads, log)
    return build(box, outline_dir(out, "box"), list(OUTLINE_FAMILIES), log, threads)


# ------------------------------------------------------- automatic outlines
#: Automatic-outline sources: ``auto-oof`` (each row outlined by a detector trained on the
#: other folds of its own cohort) and ``auto-x`` (by the detector trained on the other cohort).
AUTO_SOURCES: tuple[str, ...] = ("auto-oof", "auto-x")


def _detector_set(man: Manifest, cohort: str, data: Path, sam, cache: Path):
    """The detector's training images of ``cohort``: its lesion rows of ``man`` (+ BUSI's normals).

    Returns ``(EmbeddedSet, groups, strata, n_lesion_rows)``; the first ``n_lesion_rows``
    rows are ``man``'s rows of the cohort in order.
    """
    from deep_cv import busi_normal_rows

    from buscad.data.audit.duplicates import near_duplicate_groups
    from buscad.segment.detector_train import EmbeddedSet, embed_manifest

    les = man.subset((man.df["cohort"] == cohort).to_numpy())
    sets = [embed_manifest(les, sam, cache)]
    groups = les.df["group"].astype(str).tolist()
    strata = les.df["label"].astype(str).tolist()
    if len(sets[0]) != len(les):
        raise RuntimeError(f"{cohort}: {len(les) - len(sets[0])} lesion rows could not be read")
    if cohort == "BUSI":  # BUSI's normal images teach "no lesion"
        normals = Manifest(pd.DataFrame(busi_normal_rows(data)), root=Path("/"))
        sets.append(embed_manifest(normals, sam, cache))
        groups += [f"normal_{g}" for g in near_duplicate_groups(normals).astype(str)]
        strata += ["normal"] * len(normals)
    joined = EmbeddedSet(
        [i for s in sets for i in s.ids],
        np.concatenate([s.embeddings for s in sets]),
        [sh for s in sets for sh in s.shapes],
        [m for s in sets for m in s.masks],
    )
    return joined, groups, strata, len(les)


def auto_outlines_part(
    man: Manifest,
    out: Path,
    cohort: str,
    data: Path,
    threads: int = 1,
    folds: int = 5,
    seed: int = 0,
    log=print,
) -> dict:
    """Detectors trained on ``cohort``: out-of-fold outlines of its rows, outlines of the others.

    The detector is ``buscad segment detector``'s (:data:`buscad.segment.detector.RECOMMENDED`,
    32 channels, 30 epochs) on LiteMedSAM's cached float embeddings. The cohort's lesion
    images (BUSI: with its 133 normal images) are split into ``folds`` grouped folds (the
    protocol's near-duplicate groups; strata benign / malignant / normal). Fold ``k``'s
    images are outlined by a head trained on the other folds, with the score rule chosen
    on the out-of-fold proposals of the rows outside fold ``k`` (the rows of fold ``k``
    choose nothing that outlines them); these are the rows' ``auto-oof`` outlines. The
    head trained on every image, with the rule chosen on all out-of-fold proposals (as
    :func:`buscad.segment.detector_train.fit_detector` builds the shipped detector),
    outlines the other cohort's rows: their ``auto-x`` outlines. Each outline is the
    top-ranked kept candidate (as ``buscad predict`` without a mask reads it); a row
    without one is withheld ("no lesion found"). Writes one PNG per outlined row under
    ``outline_dir(out, source) / "masks"`` and ``parts/<cohort>.csv`` per source (one row
    per lesion row: ``found_any``, ``found`` (the top candidate matches an expert lesion,
    :func:`buscad.segment.detector_train.image_outcome`),
    ``dice`` with the expert mask (0 when withheld), ``score``, ``predicted_dice``,
    ``n_kept``). Cached per part.
    """
    import torch

    from buscad.segment.detector import RECOMMENDED, DetectorConfig
    from buscad.segment.detector_train import (
        HeadTrainConfig,
        choose_rule,
        embed_manifest,
        grouped_folds,
        head_runner,
        image_outcome,
        proposals_for,
        train_head,
    )
    from buscad.segment.medsam import MedSAM, default_cache
    from buscad.segment.medsam_convert import ensure_converted

    other = {"BUSI": "BrEaST", "BrEaST": "BUSI"}[cohort]
    parts = {s: outline_dir(out, s) / "parts" / f"{cohort}.csv" for s in AUTO_SOURCES}
    if all(p.is_file() for p in parts.values()):
        return {}
    torch.set_num_threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    sam = MedSAM(ensure_converted(), threads=threads, cache_size=2)
    cache = default_cache()
    cfg = DetectorConfig(channels=32, **RECOMMENDED)
    tc = HeadTrainConfig(epochs=30, seed=seed, threads=threads)
    train, groups, strata, n_les = _detector_set(man, cohort, data, sam, cache)
    log(f"{cohort}: {len(train)} training images ({n_les} lesion rows)")
    fold = grouped_folds(groups, strata, folds, seed)
    oof, cpu = {}, []
    for k in range(int(fold.max()) + 1):
        tr, te = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        m, h = train_head(train.train_input(cfg), train.targets, cfg, tc, rows=tr)
        oof.update(proposals_for(train, te, head_runner(m), sam, cfg))
        cpu.append(h["cpu_s"])
        log(f"{cohort} fold {k + 1}: head on {len(tr)} images ({h['cpu_s']:.0f} s CPU)")
    rules = {
        k: choose_rule([oof[i] for i in range(len(train)) if fold[i] != k], cfg)
        for k in range(int(fold.max()) + 1)
    }
    rule_all = choose_rule([oof[i] for i in range(len(train))], cfg)
    module, h = train_head(train.train_input(cfg), train.targets, cfg, tc)
    cpu.append(h["cpu_s"])
    log(f"{cohort}: final head ({h['cpu_s']:.0f} s CPU), threshold {rule_all.threshold:.3f}")
    ext = man.subset((man.df["cohort"] == other).to_numpy())
    xset = embed_manifest(ext, sam, cache)
    xprops = proposals_for(xset, range(len(xset)), head_runner(module), sam, cfg)

    def rows(ids, sets, props, rule_of, source) -> pd.DataFrame:
        masks = outline_dir(out, source) / "masks"
        masks.mkdir(parents=True, exist_ok=True)
        recs = []
        for i, image_id in enumerate(ids):
            im, rule = props[i], rule_of(i)
            kept = im.kept(rule, cfg)
            truth = sets.masks[i]
            rec = {"image_id": image_id, "cohort": cohort if sets is train else other}
            rec.update(found_any=bool(kept), n_kept=len(kept), n_proposals=len(im.proposals))
            if kept:
                top = im.proposals[kept[0]]
                mask = top.candidate.mask
                cv2.imwrite(str(masks / f"{image_id}.png"), mask.astype(np.uint8) * 255)
                score = float(rule.score(im.features()[kept[:1]])[0])
                rec.update(
                    found=image_outcome(im.lesion_iou, kept[:1])[0] == 1,
                    dice=dice(mask, truth),
                    score=score,
                    predicted_dice=top.candidate.predicted_dice,
                )
            else:
                rec.update(found=False, dice=0.0, score=np.nan, predicted_dice=np.nan)
            recs.append(rec)
        return pd.DataFrame(recs)

    own = rows(train.ids[:n_les], train, oof, lambda i: rules[int(fold[i])], "auto-oof")
    xs = rows(xset.ids, xset, xprops, lambda i: rule_all, "auto-x")
    for source, t in (("auto-oof", own), ("auto-x", xs)):
        t["detector_trained_on"] = cohort
        parts[source].parent.mkdir(parents=True, exist_ok=True)
        atomic_write_table(t, parts[source])
    doc = {
        "cohort": cohort,
        "n_training_images": len(train),
        "folds": int(fold.max()) + 1,
        "head_cpu_s": [round(c, 1) for c in cpu],
        "thresholds": {
            "per_fold": [rules[k].threshold for k in sorted(rules)],
            "all": rule_all.threshold,
        },
        "cpu_s": round(time.process_time() - c0, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    (outline_dir(out, "auto-oof") / "parts" / f"{cohort}.json").write_text(
        json.dumps(doc, indent=1)
    )
    log(
        f"{cohort}: oof found {own['found'].mean():.3f} outlined {own['found_any'].mean():.3f}; "
        f"{other} (x) found {xs['found'].mean():.3f} outlined {xs['found_any'].mean():.3f} "
        f"({doc['wall_s']:.0f} s)"
    )
    return doc


def auto_outlines(man: Manifest, out: Path, source: str) -> Manifest:
    """The rows of ``man`` that ``source`` outlined, ``mask_path`` at their automatic outline.

    Merges the parts of :func:`auto_outlines_part` into ``outline_dir(out, source) /
    "outlines.csv"`` (every lesion row; withheld ones with ``found_any`` false).
    """
    root = outline_dir(out, source)
    table = root / "outlines.csv"
    if not table.is_file():
        parts = [root / "parts" / f"{c}.csv" for c in ("BUSI", "BrEaST")]
        missing = [str(p) for p in parts if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"automatic outlines not computed: {', '.join(missing)}")
        atomic_write_table(
            pd.concat([pd.read_csv(p, dtype={"image_id": str}) for p in parts]), table
        )
    t = pd.read_csv(table, dtype={"image_id": str}).set_index("image_id")
    ids = man.df["image_id"].astype(str)
    have = t.reindex(ids)["found_any"].fillna(False).astype(bool).to_numpy()
    sub = man.subset(have)
    paths = [str((root / "masks" / f"{i}.png").resolve()) for i in sub.df["image_id"].astype(str)]
    return sub.with_columns(mask_path=paths)


def build_auto(man: Manifest, out: Path, source: str, threads: int = 1, log=print) -> dict:
    """Every outline family and every cropped deep family from ``source``'s outlines.

    Rows without an outline have no row in these tables (NaN when read): their
    prediction is withheld, as ``buscad predict`` withholds it.
    """
    sub = auto_outlines(man, out, source)
    crops = [deep_family(*v) for v in DEEP_VARIANTS if v[1] is not None]
    crops += [deep_family(*v, True) for v in NORM_VARIANTS]
    return build(sub, outline_dir(out, source), [*OUTLINE_FAMILIES, *crops], log, threads)


def load(out: Path, name: str) -> pd.DataFrame:
    """One family's table indexed by ``image_id``."""
    return pd.read_parquet(out / "features" / f"{name}.parquet").set_index("image_id")
