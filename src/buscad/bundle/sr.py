"""A bundle's result for one DICOM image as a DICOM Structured Report (highdicom, TID 1500).

:func:`write_sr` builds a Comprehensive 3D SR *Imaging Measurement Report*
(TID 1500) with one planar ROI measurement group (TID 1410) per image:

* the ROI outline: the lesion mask's outer contour (OpenCV) when a mask was
  given, else the rectangle the model read, as a ``POLYLINE`` SCOORD on the
  source image (closed: first point = last point);
* ``(111047, DCM, "Probability of cancer")``: the AI score (calibrated
  probability, UCUM unit ``1``), with the model as algorithm identification;
* ``(threshold, 99BUSCAD, ...)``: the decision threshold, and a qualitative
  evaluation ``(decision, 99BUSCAD)`` = ``malignant``, ``benign`` or ``withheld`` (the
  prediction's ``withheld``: docs/safety.md);
* the observer is a device: the bundle's name, version and a UID derived from
  the bundle's ONNX/weights hash.

The report references the source instance (evidence) and, as the standard
requires, copies its Patient and Study modules: this file is the one buscad
output that carries header values, and it is written only on request
(``buscad predict --dicom-sr DIR``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from buscad.errors import ImageReadError

#: Private coding scheme of buscad's own concepts.
SCHEME = "99BUSCAD"
#: Type 2 attributes of the Patient and General Study modules the SR copies.
TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "ReferringPhysicianName",
    "AccessionNumber",
)


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """True when the file starts with a DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def outline(roi: tuple[int, int, int, int], mask: np.ndarray | None = None) -> np.ndarray:
    """Closed ``(n, 2)`` column/row polygon: the mask's largest outer contour, else the ROI box."""
    if mask is not None and mask.any():
        import cv2

        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        c = max(contours, key=cv2.contourArea)[:, 0, :].astype(np.float32)
        if len(c) >= 3:
            return np.vstack([c, c[:1]])
    x0, y0, x1, y1 = (float(v) for v in roi)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], np.float32)


def _bundle_identity(bundle: str | os.PathLike[str]) -> tuple[str, str, str]:
    """(name, version, UID) of a bundle; the UID is derived from its model file hash."""
    import json

    from pydicom.uid import generate_uid

    doc = json.loads((Path(bundle) / "bundle.json").read_text(encoding="utf-8"))
    deep = doc["models"]["deep"]
    digest = deep.get("onnx_sha256") or str(doc.get("provenance", {}).get("created", doc["name"]))
    return str(doc["name"]), str(doc.get("version", "1")), generate_uid(entropy_srcs=[digest])


def build_sr(
    source: str | os.PathLike[str],
    result: dict[str, Any],
    bundle: str | os.PathLike[str],
    mask: np.ndarray | None = None,
) -> Any:
    """The SR dataset (``highdicom.sr.Comprehensive3DSR``) for one scored DICOM image.

    Parameters
    ----------
    source : path-like
        The DICOM file that was scored.
    result : dict
        Its ``buscad predict`` JSON (``ai_score``, ``threshold``, ``decision``, ``roi``).
    bundle : path-like
        The bundle folder that scored it (model identity).
    mask : numpy.ndarray, optional
        The lesion mask, for the outline.

    Raises
    ------
    ImageReadError
        The source cannot be read or lacks the study/series/instance UIDs an SR
        must reference.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from buscad.labels import model_label

    try:
        src = pydicom.dcmread(source, stop_before_pixels=True)
    except Exception as exc:
        raise ImageReadError(source, f"cannot read the DICOM header ({exc})") from exc
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not getattr(src, kw, None):
            raise ImageReadError(source, f"no {kw}: a DICOM SR cannot reference it")
    for kw in TYPE2_COPIED:  # type 2: present, empty when the source has no value
        if kw not in src:
            setattr(src, kw, "")
    name, version, uid = _bundle_identity(bundle)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=uid, name=name[:64], manufacturer_name="buscad", model_name=name[:64]
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    # the model that gave the AI score (the headline model) is named beside the bundle
    model = str(result.get("headline_model") or "deep")
    algorithm = hd.sr.AlgorithmIdentification(
        name=f"buscad bundle {name}"[:64],
        version=version,
        parameters=[f"model={model} ({model_label(model)})"],
    )
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=outline(tuple(result["roi"]), mask),
        source_image=hd.sr.SourceImageForRegion.from_source_image(src),
    )
    one = hd.sr.CodedConcept("1", "UCUM", "no units")
    measurements = [
        hd.sr.Measurement(
            name=codes.DCM.ProbabilityOfCancer,
            value=float(result["ai_score"]),
            unit=one,
            algorithm_id=algorithm,
        ),
        hd.sr.Measurement(
            name=hd.sr.CodedConcept("threshold", SCHEME, "Decision threshold"),
            value=float(result["threshold"]),
            unit=one,
            algorithm_id=algorithm,
        ),
    ]
    # a withheld AI call (docs/safety.md) is never written as benign or malignant
    decision = "withheld" if result.get("withheld") else str(result["decision"])
    evaluation = hd.sr.QualitativeEvaluation(
        name=hd.sr.CodedConcept("decision", SCHEME, "AI decision at threshold"),
        value=hd.sr.CodedConcept(decision, SCHEME, decision.capitalize()),
    )
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="lesion 1"),
        referenced_region=region,
        finding_type=codes.SCT.Lesion,
        measurements=measurements,
        qualitative_evaluations=[evaluation],
        algorithm_id=algorithm,
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.SCT.UltrasonographyOfBreast,
        imaging_measurements=[group],
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[src],
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=9001,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="buscad",
        series_description="buscad AI result",
        is_complete=True,
    )


def write_sr(
    source: str | os.PathLike[str],
    result: dict[str, Any],
    bundle: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    mask: str | os.PathLike[str] | np.ndarray | None = None,
) -> Path:
    """Write :func:`build_sr`'s report as ``OUT_DIR/<source stem>_sr.dcm`` (atomically).

    ``mask`` may be a mask file (read at the image's size) or an array.
    """
    from buscad.utils import atomic_path

    arr = None
    if mask is not None and not isinstance(mask, np.ndarray):
        from buscad.data.io import read_image, read_mask

        arr = read_mask(mask, shape=read_image(source)[0].shape)
    elif isinstance(mask, np.ndarray):
        arr = mask
    sr = build_sr(source, result, bundle, arr)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    f = out / f"{Path(source).stem}_sr.dcm"
    with atomic_path(f) as tmp:
        sr.save_as(tmp, enforce_file_format=True)
    return f


def read_sr_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    """AI score, threshold, decision and ROI outline read back from :func:`write_sr`'s file."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sr = hd.sr.srread(path)
    group = sr.content.get_planar_roi_measurement_groups()[0]
    values = {}
    for m in group.get_measurements():
        values[m.name.value] = m.value
    ev = group.get_qualitative_evaluations()[0]
    region = group.roi
    return {
        "ai_score": float(values[codes.DCM.ProbabilityOfCancer.value]),
        "threshold": float(values["threshold"]),
        "decision": str(ev.value.value),
        "outline": np.asarray(region.value, dtype=float),
        "referenced_sop_instance_uid": str(
            region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        ),
    }


__all__ = ["build_sr", "is_dicom", "outline", "read_sr_result", "write_sr"]
