"""Web-app test helpers: a small real (non-constant) predictor, and a DICOM with patient data.

It follows :class:`buscad.bundle.types.Predictor` honestly: the region read is
the mask's bounding box, else the box, else the whole image; the score of the
``contrast`` model rises when the region is darker than its surroundings (as
malignant-looking phantom lesions are), the ``texture`` model's score rises
with the region's heterogeneity, and the ``clinical`` model needs ``age`` and
is skipped without it. The heatmap is the local contrast (absolute difference
from a Gaussian-smoothed image) inside the region, scaled to [0, 1].
"""

from __future__ import annotations

import io
import math
import time
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from buscad.bundle.types import Prediction, input_sources, likelihood_band


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class ContrastPredictor:
    """Deterministic image-statistics predictor (testing stand-in, not a trained model)."""

    name = "contrast-test"
    version = "0.0-test"
    threshold = 0.5
    primary_model = "contrast"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.model_names = ["contrast", "texture", "clinical"]
        self.clinical_inputs = ["age"]
        self.delay_s = delay_s
        self.calls = 0

    def predict(
        self,
        gray: np.ndarray,
        mask: np.ndarray | None = None,
        box: tuple[int, int, int, int] | None = None,
        clinical: dict[str, Any] | None = None,
        heatmap: bool = True,
    ) -> Prediction:
        t0 = time.perf_counter()
        self.calls += 1
        g = np.asarray(gray, dtype=np.float32)
        if g.ndim != 2:
            raise ValueError(f"expected a 2-D grayscale image, got shape {g.shape}")
        g = g / (g.max() if g.max() > 0 else 1.0)
        h, w = g.shape
        if mask is not None:
            if mask.shape != g.shape:
                raise ValueError(f"mask shape {mask.shape} differs from image shape {g.shape}")
            ys, xs = np.nonzero(mask)
            roi = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            source = "mask"
        elif box is not None:
            roi = tuple(int(v) for v in box)
            source = "box"
        else:
            roi = (0, 0, w, h)
            source = "whole"
        x0, y0, x1, y1 = roi
        inside = g[y0:y1, x0:x1]
        ring = np.ones_like(g, dtype=bool)
        ring[y0:y1, x0:x1] = False
        outside = g[ring] if ring.any() else g.ravel()
        contrast = float(outside.mean() - inside.mean())
        texture = float(inside.std())
        scores: dict[str, float | None] = {
            "contrast": _sigmoid(12.0 * (contrast - 0.05)),
            "texture": _sigmoid(20.0 * (texture - 0.15)),
        }
        skipped: dict[str, str] = {}
        age = (clinical or {}).get("age")
        if age is None:
            scores["clinical"] = None
            skipped["clinical"] = "needs age"
        else:
            scores["clinical"] = _sigmoid((float(age) - 50.0) / 8.0)
        if self.delay_s:
            time.sleep(self.delay_s)
        hm = None
        t1 = time.perf_counter()
        if heatmap:
            local = np.abs(g - ndimage.gaussian_filter(g, 4.0))
            local = ndimage.gaussian_filter(local, 3.0)
            hm = np.zeros_like(g, dtype=np.float32)
            part = local[y0:y1, x0:x1]
            top = float(part.max())
            hm[y0:y1, x0:x1] = part / top if top > 0 else 0.0
        p = float(scores["contrast"])
        t2 = time.perf_counter()
        return Prediction(
            ai_score=p,
            primary_model=self.primary_model,
            threshold=self.threshold,
            decision="malignant" if p >= self.threshold else "benign",
            band=likelihood_band(p),
            model_scores=scores,
            skipped_models=skipped,
            roi=roi,
            roi_source=source,
            heatmap=hm,
            timings_ms={"score": (t1 - t0) * 1e3, "heatmap": (t2 - t1) * 1e3},
            inputs=input_sources(["age"], {} if age is None else {"age": age}, {}),
        )


PATIENT_NAME = "Doe^Janeqx"
PATIENT_ID = "PID98765432"
DATES = ("19610203", "20240115")


def make_dicom(gray: np.ndarray) -> bytes:
    """A single-frame 8-bit ultrasound DICOM carrying a name, an ID and dates."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = DATES[0]
    ds.StudyDate = DATES[1]
    ds.InstitutionName = "Hospital Zyx"
    ds.Modality = "US"
    ds.Rows, ds.Columns = gray.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(gray, dtype=np.uint8).tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()
