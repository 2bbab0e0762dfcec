"""What a bundle knows about its own limits: its training data, its feature space, its study checks.

Three records, all written by :func:`buscad.bundle.bundle.write_bundle` into the
bundle (JSON in ``bundle.json``; the feature model as ``ood.safetensors`` +
``ood.json``, never a pickle), and read at every prediction:

``training`` (:func:`training_record`)
    what the models were trained on: the cohorts (name, phantom or real, image
    counts by label), the number of training images, the CNN's input size and
    backbone. ``phantom: true`` when any training cohort is synthetic: every
    result then carries :data:`PHANTOM_BANNER`. A bundle written before this
    record existed says :data:`PROVENANCE_UNKNOWN`.

``ood`` (:class:`FeatureOOD`)
    an out-of-distribution model of the training images in a feature space: the
    k-nearest-neighbour distance (Sun et al., ICML 2022) of an image's L2-normalised
    features ``z = f / ||f||`` to the training rows', ``d(x) = ||z(x) - z_(k)||`` with
    ``z_(k)`` its k-th nearest training row. The features are a frozen ImageNet
    encoder's of the region the CNN reads (:mod:`buscad.bundle.ood_encoder`; space
    ``imagenet-efficientnet_lite0-224``), or, in bundles written before it (space
    ``cnn``), the CNN's own. The limit is the :data:`OOD_PERCENTILE` th percentile of
    the training rows' *out-of-fold* distances (each row's k-th nearest row in the
    other cross-validation folds; without folds, its k-th nearest *other* row), so
    about 1 % of training-like images exceed it. An image above the limit gets its AI
    call withheld.

``flags`` (:func:`study_flags`, :func:`model_flags`)
    what the study's own out-of-fold numbers say is broken about a model. The
    policy (docs/safety.md): a flagged primary model's bundle is still written, so
    the study can be inspected, but ``bundle.json`` lists the flags and every
    prediction withholds its AI call and says why; a flagged other model is marked
    in the models' table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from buscad.bundle.types import Prediction

#: The phantom banner: what every result of a bundle trained on synthetic images says first.
PHANTOM_BANNER = (
    "DEMO MODEL trained on synthetic phantom images, not on patients: its output says "
    "nothing about a real patient's lesion."
)
#: What a bundle without a ``training`` record says about its training data.
PROVENANCE_UNKNOWN = (
    "provenance unknown: this bundle was written before buscad recorded its training data"
)
#: The percentile of the training rows' leave-one-out distances used as the OOD limit.
OOD_PERCENTILE = 99.0
#: Neighbours of the k-NN distance (fewer when the training rows are few).
OOD_K = 5
#: Training rows kept in the OOD model (a seeded random subset above this).
OOD_MAX_ROWS = 5000
OOD_FILE = "ood"
#: File stem of the whole-frame OOD model (checked when the segmenter searched the frame).
OOD_FRAME_FILE = "ood_frame"
#: A model is "constant" when more than this fraction of its out-of-fold scores share one value.
CONSTANT_FRACTION = 0.5


def training_record(
    cohorts: list[dict[str, Any]], input_size: int | None, backbone: str | None = None
) -> dict[str, Any]:
    """The ``training`` record of ``bundle.json``.

    Parameters
    ----------
    cohorts : list of dict
        One per training cohort: ``name``, ``phantom`` (bool), ``images`` (training
        rows) and ``labels`` (label -> count).
    input_size, backbone
        The CNN's input size in pixels and its backbone.
    """
    cohorts = [
        {
            "name": str(c["name"]),
            "phantom": bool(c["phantom"]),
            "images": int(c["images"]),
            "labels": {str(k): int(v) for k, v in (c.get("labels") or {}).items()},
        }
        for c in cohorts
    ]
    return {
        "cohorts": cohorts,
        "images": sum(c["images"] for c in cohorts),
        "phantom": any(c["phantom"] for c in cohorts),
        "input_size": None if input_size is None else int(input_size),
        "backbone": backbone,
    }


def is_phantom_cohort(name: str, rows: Any, phantom_cohorts: Sequence[str]) -> bool:
    """Whether a cohort is synthetic: named in ``phantom_cohorts`` (the study config generates
    it) or every one of its ``rows``' ``device`` reads ``phantom-...`` (the manifests
    ``buscad demo`` writes)."""
    dev = rows["device"].astype(str) if "device" in rows else None
    return str(name) in phantom_cohorts or (
        dev is not None and len(dev) > 0 and bool(dev.str.startswith("phantom-").all())
    )


def training_from_rows(rows: Any, phantom_cohorts: list[str], spec: dict) -> dict[str, Any]:
    """:func:`training_record` from the training rows' manifest table and the CNN's spec.

    A cohort is a phantom cohort by :func:`is_phantom_cohort`.
    """
    cohorts = []
    for name, grp in rows.groupby("cohort", sort=False):
        cohorts.append(
            {
                "name": name,
                "phantom": is_phantom_cohort(str(name), grp, phantom_cohorts),
                "images": len(grp),
                "labels": grp["label"].value_counts().to_dict(),
            }
        )
    pre = spec.get("preprocessing", {})
    bb = spec.get("backbone")
    name = bb.get("name") if isinstance(bb, dict) else bb
    return training_record(cohorts, pre.get("input_size"), name)


def training_text(training: dict[str, Any] | None) -> str:
    """What the bundle was trained on, in one line (:data:`PROVENANCE_UNKNOWN` without a record)."""
    if not training:
        return PROVENANCE_UNKNOWN
    parts = []
    for c in training.get("cohorts", []):
        kind = "synthetic phantoms" if c.get("phantom") else "real images"
        labels = ", ".join(f"{v} {k}" for k, v in c.get("labels", {}).items())
        parts.append(f"{c['name']} ({c['images']} {kind}" + (f": {labels})" if labels else ")"))
    size = training.get("input_size")
    return (
        f"trained on {training.get('images', 0)} images: "
        + "; ".join(parts)
        + (f"; CNN input {size} px" if size else "")
    )


def flags_text(flags: Sequence[str], headline: str | None = "deep") -> str | None:
    """What the study's checks of the CNN (``flags``) mean for the bundle's calls, in one sentence.

    With the CNN as the headline model (``headline`` ``"deep"`` or None) every AI call is
    withheld; with another headline model only the calls the CNN gives (when that model
    cannot score an image) are. None without flags. The CLI, the app, the study's
    warnings and its report's bottom line all say this sentence.
    """
    if not flags:
        return None
    if headline in (None, "deep"):
        which = "so every AI call of the bundle is withheld"
    else:
        which = (
            "so every AI call the CNN gives (when the study's headline model cannot score an "
            "image) is withheld"
        )
    return f"The bundle's CNN failed the study's checks, {which}: " + "; ".join(flags)


def banner(training: dict[str, Any] | None) -> str | None:
    """The banner every result carries: :data:`PHANTOM_BANNER` for a phantom-trained bundle."""
    return PHANTOM_BANNER if training and training.get("phantom") else None


# ------------------------------------------------------------------- study checks
def _constant_share(scores: np.ndarray) -> float:
    """Largest share of scores equal to one value (rounded to 1e-4)."""
    s = np.round(np.asarray(scores, float), 4)
    if s.size == 0:
        return 0.0
    _, counts = np.unique(s, return_counts=True)
    return float(counts.max() / s.size)


def model_flags(y: np.ndarray, scores: np.ndarray, what: str = "the model") -> list[str]:
    """Why a model's out-of-fold training scores say it is broken (empty when none).

    Rules: the AUC's 95 % DeLong CI does not exclude 0.5 (its lower bound ``<= 0.5``:
    it is not shown to rank better than chance; this includes every AUC below 0.5),
    or more than :data:`CONSTANT_FRACTION` of the scores share one value
    (``max_v #{s_i = v} / n``, scores rounded to 1e-4).
    """
    from buscad.evaluate.delong import auc_ci

    y = np.asarray(y, int)
    s = np.asarray(scores, float)
    ok = np.isfinite(s)
    y, s = y[ok], s[ok]
    out = []
    if len(np.unique(y)) == 2 and len(y) >= 4:
        r = auc_ci(y, s)
        if not r.lo > 0.5:
            worse = " (it ranks cases in reverse)" if r.hi < 0.5 else ""
            out.append(
                f"{what} is not shown to be better than chance: out-of-fold AUC {r.auc:.2f} "
                f"(95% CI {r.lo:.2f}-{r.hi:.2f}){worse}"
            )
    share = _constant_share(s)
    if share > CONSTANT_FRACTION:
        out.append(f"{what} gives the same score to {100 * share:.0f}% of its training images")
    return out


def study_flags(
    y: np.ndarray, oof: np.ndarray, slope: float, threshold: float, calibrated: np.ndarray
) -> list[str]:
    """The primary model's flags: :func:`model_flags` plus its calibration and threshold.

    Also flagged: a Platt calibration slope ``a <= 0`` (the calibrated score runs
    against the CNN's), and a threshold outside ``[min, max]`` of the calibrated
    out-of-fold scores (it cannot separate them).
    """
    out = model_flags(y, oof, "the CNN")
    if not slope > 0:
        out.append(
            f"the calibration slope is {slope:.2f} (not above 0): the calibrated score "
            "runs against the CNN's"
        )
    c = np.asarray(calibrated, float)
    c = c[np.isfinite(c)]
    if c.size and not (c.min() <= threshold <= c.max()):
        out.append(
            f"the decision threshold {100 * threshold:.1f}% lies outside the training scores' "
            f"range ({100 * c.min():.1f}-{100 * c.max():.1f}%)"
        )
    return out


# ------------------------------------------------------------------- OOD model
def _normalise(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, np.float32)
    if f.ndim == 1:
        f = f[None]
    n = np.linalg.norm(f, axis=1, keepdims=True)
    return f / np.maximum(n, 1e-12)


@dataclass
class FeatureOOD:
    """k-NN out-of-distribution model of the training images' deep features (see module doc).

    Attributes
    ----------
    train : numpy.ndarray
        ``(n, d)`` float32 L2-normalised training features.
    k : int
        The neighbour whose distance is taken.
    limit : float
        The :data:`OOD_PERCENTILE` th percentile of the training rows' leave-one-out distances.
    """

    train: np.ndarray
    k: int
    limit: float
    percentile: float = OOD_PERCENTILE
    space: str = "cnn"
    limit_rule: str = "leave-one-out"

    @classmethod
    def fit(
        cls,
        feats: np.ndarray,
        k: int = OOD_K,
        percentile: float = OOD_PERCENTILE,
        max_rows: int = OOD_MAX_ROWS,
        seed: int = 0,
        folds: np.ndarray | None = None,
        space: str = "cnn",
    ) -> FeatureOOD:
        """Fit on training features ``(n, d)``.

        The limit is the ``percentile`` of the training rows' k-NN distances to the
        rows of the *other* folds when ``folds`` (one fold id per row, at least two
        folds) is given, otherwise to every other row (leave-one-out).
        """
        z = _normalise(feats)
        ok = np.isfinite(z).all(1)
        z = z[ok]
        f = None if folds is None else np.asarray(folds)[ok]
        if len(z) > max_rows:
            keep = np.random.default_rng(seed).choice(len(z), max_rows, replace=False)
            z, f = z[keep], (None if f is None else f[keep])
        if len(z) < 3:
            raise ValueError(f"the OOD model needs at least 3 training rows, got {len(z)}")
        if f is not None and len(np.unique(f)) >= 2:
            kk = int(max(1, min(k, min(int((f != v).sum()) for v in np.unique(f)))))
            d = np.concatenate([cls._knn(z[f == v], z[f != v], kk) for v in np.unique(f)])
            return cls(
                z, kk, float(np.percentile(d, percentile)), float(percentile), space, "out-of-fold"
            )
        k = int(max(1, min(k, len(z) - 2)))
        d = cls._knn(z, z, k + 1)  # the nearest is the row itself
        return cls(z, k, float(np.percentile(d, percentile)), float(percentile), space)

    @staticmethod
    def _knn(q: np.ndarray, z: np.ndarray, k: int) -> np.ndarray:
        """k-th smallest Euclidean distance of each unit query row to the unit rows of ``z``.

        For unit vectors ``||q - z||^2 = 2 - 2 q.z``: one matrix product per 512 queries
        (``einsum`` for a few queries: a threaded BLAS call costs more than the sums
        themselves for one image on a busy machine).
        """
        out = np.empty(len(q), np.float32)
        for i in range(0, len(q), 512):
            qq = q[i : i + 512]
            dot = np.einsum("ij,kj->ik", qq, z) if len(qq) <= 16 else qq @ z.T
            d2 = np.maximum(2.0 - 2.0 * dot, 0.0)
            out[i : i + 512] = np.sqrt(np.partition(d2, k - 1, axis=1)[:, k - 1])
        return out

    def distance(self, feats: np.ndarray) -> np.ndarray:
        """k-NN distance of each row of ``feats`` (or one vector) to the training rows."""
        return self._knn(_normalise(feats), self.train, self.k)

    def ratio(self, feats: np.ndarray) -> float:
        """One image's distance over the limit (> 1: outside the training images)."""
        return float(self.distance(feats)[0] / max(self.limit, 1e-12))

    def save(self, folder: str | os.PathLike[str], name: str = OOD_FILE) -> dict[str, Any]:
        """Write ``{name}.safetensors`` + ``{name}.json`` into ``folder``; the ``bundle.json`` entry."""
        from safetensors.numpy import save_file

        from buscad.utils import atomic_write_json, file_sha256

        out = Path(folder)
        st = out / f"{name}.safetensors"
        save_file({"train": np.ascontiguousarray(self.train, np.float32)}, str(st))
        meta = {
            "method": "knn-distance on L2-normalised features",
            "space": self.space,
            "k": self.k,
            "limit": self.limit,
            "percentile": self.percentile,
            "limit_rule": f"percentile of the training rows' {self.limit_rule} k-NN distances",
            "rows": len(self.train),
            "dim": int(self.train.shape[1]),
        }
        atomic_write_json(out / f"{name}.json", meta)
        return {"file": name, "sha256": file_sha256(st), **meta}

    @classmethod
    def load(
        cls, folder: str | os.PathLike[str], sha256: str | None = None, name: str = OOD_FILE
    ) -> FeatureOOD:
        """Read a model :meth:`save` wrote (checked against ``sha256`` when given)."""
        from safetensors.numpy import load_file

        from buscad.errors import ModelFileError
        from buscad.utils import file_sha256

        st = Path(folder) / f"{name}.safetensors"
        js = Path(folder) / f"{name}.json"
        if not st.is_file() or not js.is_file():
            raise ModelFileError(st, "out-of-distribution model not found")
        if sha256 and file_sha256(st) != sha256:
            raise ModelFileError(st, "SHA-256 does not match bundle.json")
        meta = json.loads(js.read_text(encoding="utf-8"))
        train = load_file(str(st))["train"]
        rule = str(meta.get("limit_rule", ""))
        return cls(
            train,
            int(meta["k"]),
            float(meta["limit"]),
            float(meta["percentile"]),
            str(meta.get("space", "cnn")),
            "out-of-fold" if "out-of-fold" in rule else "leave-one-out",
        )


def ood_text(ratio: float) -> str:
    """The out-of-distribution caution in words."""
    return (
        "this image is unlike the images the model was trained on (its distance to them is "
        f"{ratio:.2f}x the limit that 99% of the training images fall within)"
    )


def ood_frame_text(ratio: float) -> str:
    """The caution when the whole frame the segmenter searched is unlike the training frames."""
    return (
        "the whole image is unlike the images the model was trained on (its distance to them "
        f"is {ratio:.2f}x the limit that 99% of the training images fall within): the "
        "automatic outline and the result may be unreliable"
    )


def flagged_outline_text(
    predicted_dice: float, threshold: float | None = None, accepted: bool = False
) -> str:
    """The caution of a flagged outline: its predicted Dice under the flag threshold.

    ``accepted``: the user saw the flag and accepted the outline (the web app).
    """
    below = "" if threshold is None else f", below {threshold:.2f}"
    head = f"the segmenter's outline may be wrong (predicted Dice {predicted_dice:.2f}{below})"
    if accepted:
        return f"{head}; the user checked and accepted it"
    return f"{head}: check the outline or redraw the box before trusting the result"


def with_image_checks(pred: Prediction, meta: Any) -> Prediction:
    """``pred`` with the checks only the file can tell: a colour (Doppler) image withholds the call.

    ``meta`` is the reader's :class:`~buscad.data.io.ImageMeta` (its ``colour_fraction``;
    see :mod:`buscad.data.quality`). The same function serves ``buscad predict`` and the app.
    """
    from buscad.data.quality import ImageChecks

    text = ImageChecks(getattr(meta, "colour_fraction", None)).colour_text()
    return pred.with_cautions([text], withhold=True) if text else pred


__all__ = [
    "PHANTOM_BANNER",
    "PROVENANCE_UNKNOWN",
    "FeatureOOD",
    "banner",
    "flags_text",
    "model_flags",
    "ood_frame_text",
    "ood_text",
    "study_flags",
    "training_from_rows",
    "training_record",
    "training_text",
    "with_image_checks",
]
