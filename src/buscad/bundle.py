"""The model bundle a study run leaves behind: what ``buscad predict`` and ``buscad serve`` load.

A bundle is a folder::

    bundle.json          format, name, primary model, threshold, calibration, provenance, metrics
    model.safetensors    the chosen CNN (weights)      ┐ written by
    model.json           its spec and preprocessing    ┘ buscad.models.checkpoint
    model_card.md        intended use, data, metrics, limitations

Nothing in it is a pickle. The AI score is the CNN's malignant probability
passed through a Platt calibration ``p = 1 / (1 + exp(-(a · logit(s) + b)))``
fitted on the training rows' *out-of-fold* scores; the decision threshold is
Youden's on those calibrated out-of-fold scores (training data only).

This version carries the deep model. The classical models (radiomics, DLR,
clinical, US, CLDLR, integrated) are evaluated in the study report but are not
yet exported to bundles; a prediction lists them under ``skipped_models``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from buscad.bundle_types import Prediction, likelihood_band
from buscad.errors import MaskError, ModelFileError
from buscad.utils import atomic_write_json, atomic_write_text

FORMAT = "buscad-bundle"
VERSION = 1
NOT_EXPORTED = "evaluated in the study report; not exported to bundles yet"


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def fit_platt(scores: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt calibration of scores on their logit: ``p = sigmoid(a · logit(s) + b)``.

    Fitted by (nearly unpenalised) logistic regression of ``y`` on ``logit(s)``.
    """
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e6, max_iter=1000).fit(_logit(scores)[:, None], np.asarray(y, int))
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def calibrate(scores: np.ndarray | float, a: float, b: float) -> np.ndarray:
    """Apply :func:`fit_platt`'s calibration."""
    return 1.0 / (1.0 + np.exp(-(a * _logit(np.atleast_1d(scores)) + b)))


def write_bundle(
    out: str | os.PathLike[str],
    checkpoint_stem: str | os.PathLike[str],
    oof_scores: np.ndarray,
    y: np.ndarray,
    *,
    name: str,
    metrics: list[dict] | None = None,
    model_card: str = "",
    provenance: dict | None = None,
    cam_method: str = "gradcam",
) -> Path:
    """Write a bundle from a deep checkpoint and its out-of-fold training scores.

    Returns
    -------
    pathlib.Path
        The bundle folder.
    """
    import shutil

    from buscad.evaluate.metrics import youden_threshold

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(checkpoint_stem)
    for suffix in (".safetensors", ".json"):  # names kept: the JSON names its weights file
        shutil.copyfile(stem.with_suffix(suffix), out / stem.with_suffix(suffix).name)
    ok = ~np.isnan(np.asarray(oof_scores, dtype=float))
    s, yy = np.asarray(oof_scores, dtype=float)[ok], np.asarray(y, dtype=int)[ok]
    a, b = fit_platt(s, yy)
    threshold = youden_threshold(yy, calibrate(s, a, b))
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "name": name,
        "primary_model": "deep",
        "models": {"deep": {"checkpoint": stem.name, "cam": cam_method}},
        "calibration": {
            "method": "platt-logit",
            "a": a,
            "b": b,
            "fitted_on": "out-of-fold training scores",
        },
        "threshold": float(threshold),
        "threshold_rule": "youden on calibrated out-of-fold training scores",
        "not_exported": ["radiomics", "dlr", "clinical", "us", "cldlr", "integrated"],
        "metrics": metrics or [],
        "provenance": provenance or {},
    }
    atomic_write_json(out / "bundle.json", doc)
    atomic_write_text(out / "model_card.md", model_card or f"# {name}\n")
    return out


class Bundle:
    """A loaded bundle; implements :class:`buscad.bundle_types.Predictor`.

    Use :meth:`load`. ``predict`` is thread-safe (one inference at a time).
    """

    def __init__(self, path: Path, doc: dict, model: Any, spec: dict) -> None:
        from buscad.preprocess import Preprocessor

        self.path = path
        self.doc = doc
        self.model = model
        self.spec = spec
        self.pre = Preprocessor.from_dict(spec["preprocessing"])
        self.name = str(doc.get("name", path.name))
        self.threshold = float(doc["threshold"])
        self.primary_model = str(doc["primary_model"])
        self.model_names = ["deep", *doc.get("not_exported", [])]
        self.clinical_inputs: list[str] = []
        self.version = str(doc.get("version"))
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Bundle:
        """Load a bundle folder.

        Raises
        ------
        ModelFileError
            Not a bundle, an unknown version, or missing/corrupt model files.
        """
        from buscad.models.checkpoint import load_checkpoint

        p = Path(path)
        f = p / "bundle.json"
        if not f.is_file():
            raise ModelFileError(p, "not a buscad bundle (no bundle.json)")
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ModelFileError(f, f"not valid JSON ({exc})") from exc
        if doc.get("format") != FORMAT or int(doc.get("version", 0)) > VERSION:
            raise ModelFileError(f, f"not a {FORMAT} v{VERSION} file")
        model, spec = load_checkpoint(p / doc["models"]["deep"]["checkpoint"])
        return cls(p, doc, model, spec)

    def _roi(
        self, gray: np.ndarray, mask: np.ndarray | None, box: tuple[int, int, int, int] | None
    ) -> tuple[tuple[int, int, int, int], str]:
        from buscad.preprocess import roi_box

        h, w = gray.shape
        if mask is not None:
            if mask.shape != gray.shape:
                raise MaskError(
                    "<mask>",
                    f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image size {w}x{h}",
                )
            if not mask.any():
                raise MaskError("<mask>", "mask is empty")
            y0, y1, x0, x1 = roi_box(mask, self.pre.margin)
            return (x0, y0, x1, y1), "mask"
        if box is not None:
            m = np.zeros(gray.shape, bool)
            x0, y0, x1, y1 = (int(v) for v in box)
            m[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)] = True
            if not m.any():
                raise ValueError("the box lies outside the image")
            y0, y1, x0, x1 = roi_box(m, self.pre.margin)
            return (x0, y0, x1, y1), "box"
        return (0, 0, w, h), "whole"

    def predict(
        self,
        gray: np.ndarray,
        mask: np.ndarray | None = None,
        box: tuple[int, int, int, int] | None = None,
        clinical: dict[str, Any] | None = None,
        heatmap: bool = True,
    ) -> Prediction:
        """Score one grayscale image (mask wins over box; neither: the whole image)."""
        import torch

        from buscad.data.io import to_uint8
        from buscad.explain import compute_cam
        from buscad.preprocess import resize

        t0 = time.perf_counter()
        g = to_uint8(gray)
        (x0, y0, x1, y1), source = self._roi(g, mask, box)
        crop = resize(g[y0:y1, x0:x1], self.pre.input_size)
        x = self.pre(crop[None])
        timings = {"preprocess": (time.perf_counter() - t0) * 1000}
        with self._lock:
            t1 = time.perf_counter()
            with torch.no_grad():
                raw = float(torch.softmax(self.model(x).float(), 1)[0, 1])
            timings["score"] = (time.perf_counter() - t1) * 1000
            hm = None
            if heatmap:
                t2 = time.perf_counter()
                cam = compute_cam(self.model, x, self.doc["models"]["deep"].get("cam", "gradcam"))[
                    0
                ]
                hm = np.zeros(g.shape, np.float32)
                from PIL import Image

                hm[y0:y1, x0:x1] = (
                    np.asarray(
                        Image.fromarray((cam * 255).astype(np.uint8)).resize(
                            (x1 - x0, y1 - y0), Image.BILINEAR
                        ),
                        dtype=np.float32,
                    )
                    / 255.0
                )
                timings["heatmap"] = (time.perf_counter() - t2) * 1000
        cal = self.doc["calibration"]
        p = float(calibrate(raw, cal["a"], cal["b"])[0])
        return Prediction(
            ai_score=p,
            primary_model="deep",
            threshold=self.threshold,
            decision="malignant" if p >= self.threshold else "benign",
            band=likelihood_band(p),
            model_scores={"deep": p, **dict.fromkeys(self.doc.get("not_exported", []))},
            skipped_models=dict.fromkeys(self.doc.get("not_exported", []), NOT_EXPORTED),
            roi=(int(x0), int(y0), int(x1), int(y1)),
            roi_source=source,
            heatmap=hm,
            timings_ms={k: round(v, 2) for k, v in timings.items()},
        )
