"""Inference of the lesion segmenter: NumPy pre/post-processing around any runner.

This module imports neither torch nor timm: with an ONNX file the whole path is
NumPy, OpenCV, SciPy and ONNX Runtime, which is what model bundles and the web
app need. The PyTorch runner lives in :mod:`buscad.segment.model` and is
imported only when a ``.safetensors`` model is loaded with ``backend="torch"``.

Two modes share one network whose input has two channels, the normalised gray
image ``(g / 255 - 0.5) / 0.5`` and a *prompt* channel:

box-prompted
    the image is cropped around the user's box enlarged by ``margin`` of its
    width/height on each side, resized to ``input_size`` squared; the prompt
    channel is 1 inside the box and 0 elsewhere. The outline is the
    thresholded probability's connected component that overlaps the box most,
    holes filled.
automatic
    the whole image is resized to ``input_size`` squared with an all-zero prompt
    channel. Each connected component of ``prob > threshold`` larger than
    ``min_area`` (fraction of the image) is a candidate; its confidence is the
    mean probability inside it. Candidates below ``confidence_threshold`` are
    dropped; ``found`` is False ("no lesion found") when none is left. With
    ``refine`` each candidate's outline is recomputed by a box-prompted pass on
    its own box.

A segmenter folder may also carry LiteMedSAM (``litemedsam/``: two ONNX
graphs and their manifest, :mod:`buscad.segment.medsam`), or reference the
converted graphs in the cache by SHA-256 (``"litemedsam"`` in the JSON). Then
every box-prompted outline (a user's box, and the refinement of each automatic
candidate) is LiteMedSAM's: the thresholded logits' connected component that
overlaps the box most, holes filled, with the decoder's IoU estimate as its
confidence, and its calibrated predicted Dice
(:class:`buscad.segment.medsam.OutlineConfidence`; the JSON's
``litemedsam.confidence`` when present, else the packaged calibration) sets
``Candidate.predicted_dice`` and ``Candidate.flagged`` (predicted Dice below the
calibration's threshold: check or redraw). The U-Net's own outlines keep their
mean-probability confidence with no predicted Dice and are never flagged: that
number is not a Dice estimate. The image embedding is cached per image, so a redrawn box reruns
only the decoder. A folder with LiteMedSAM alone (``arch = "LiteMedSAM"``, no
U-Net) outlines boxes only, unless it also carries a lesion detector.

A segmenter folder with LiteMedSAM may carry a lesion detector (``detector/``,
:mod:`buscad.segment.detector`, recorded in the JSON's ``"detector"`` with the
SHA-256 of its ``detector.json``): a small head on LiteMedSAM's image embedding
whose heat-map components, outlined by LiteMedSAM, are the automatic candidates
(ranked by the detector's score, which is then their ``confidence``; "no lesion
found" when none reaches its threshold). When present it is the automatic
proposer, in place of the U-Net (:attr:`Segmenter.can_auto`).

Boxes are ``(x0, y0, x1, y1)`` in pixels of the original image, end exclusive.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from buscad.errors import ModelFileError
from buscad.segment.base import (
    FORMAT,
    FORMAT_VERSION,
    JSON_NAME,
    ONNX_NAME,
    WEIGHTS_NAME,
    Box,
    Candidate,
    OnnxRunner,
    Runner,
    SegConfig,
    SegResult,
    _sidecar_paths,
    clip_box,
    components,
    fill_holes,
    make_input,
    mask_box,
    normalise,
    paste,
    read_spec,
    sigmoid,
)
from buscad.utils import atomic_write_json, file_sha256

if TYPE_CHECKING:
    from buscad.segment.detector import Detector
    from buscad.segment.medsam import MedSAM

#: ``SegConfig.arch`` of a segmenter that is LiteMedSAM alone (box prompts only).
MEDSAM_ARCH = "LiteMedSAM"

#: Sub-folder of a segmenter folder that carries LiteMedSAM's graphs.
MEDSAM_DIR = "litemedsam"


def _load_box_model(
    jpath: Path, spec: dict, threads: int | None, checked: dict[str, str] | None = None
) -> MedSAM | None:
    """LiteMedSAM of a segmenter: its ``litemedsam/`` folder, else the cache entry the JSON names.

    The JSON's ``litemedsam.sha256`` (both graphs' digests) must match the graphs used
    (the manifest's digests, which the files are hashed against unless ``checked`` gives
    the digests the caller has just computed: :class:`buscad.segment.medsam.MedSAM`);
    its ``litemedsam.box_ensemble``, when present, is the box prompts'
    :class:`buscad.segment.medsam.BoxEnsemble` (absent: the box alone at 0.5).
    """
    ref = spec.get("litemedsam")
    carried = jpath.parent / MEDSAM_DIR
    if ref is None and not carried.is_dir():
        return None
    from buscad.segment.medsam import DECODER_NAME, ENCODER_NAME, MedSAM, default_folder

    folder = carried if carried.is_dir() else default_folder()
    if not folder.is_dir():
        raise ModelFileError(
            folder, "LiteMedSAM graphs not found (run `buscad segment medsam` to convert them)"
        )
    model = MedSAM(folder, threads=threads, checked=checked)
    want = (ref or {}).get("sha256") or {}
    for name in (ENCODER_NAME, DECODER_NAME):
        if want.get(name) and want[name] != model.manifest["sha256"][name]:
            raise ModelFileError(folder / name, f"SHA-256 does not match {jpath.name}")
    if (ref or {}).get("confidence") is not None:
        from buscad.segment.medsam import OutlineConfidence

        model.confidence = OutlineConfidence.from_dict(ref["confidence"], jpath)
    if (ref or {}).get("box_ensemble") is not None:  # test-time box ensemble / threshold
        from buscad.segment.medsam import BoxEnsemble

        model.box_ensemble = BoxEnsemble.from_dict(ref["box_ensemble"], jpath)
    return model


def add_medsam(
    folder: str | os.PathLike[str],
    carry: bool = True,
    source: str | os.PathLike[str] | None = None,
) -> Path:
    """Give a segmenter folder LiteMedSAM box outlines (a new folder: LiteMedSAM alone).

    Parameters
    ----------
    folder : path-like
        A segmenter folder (its U-Net stays the automatic proposer), or a new folder.
    carry : bool
        Copy both graphs into ``folder/litemedsam`` (self-contained); else the JSON
        only references the converted cache folder by the graphs' SHA-256.
    source : path-like, optional
        A converted LiteMedSAM folder (default: :func:`buscad.segment.medsam_convert.ensure_converted`).

    Returns
    -------
    pathlib.Path
        ``folder``.
    """
    from buscad.segment.medsam import DECODER_NAME, ENCODER_NAME, read_manifest, segmenter_folder

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if source is None:
        from buscad.segment.medsam_convert import ensure_converted

        source = ensure_converted()
    src = Path(source)
    doc = read_manifest(src)
    if carry:
        segmenter_folder(out, src)
    jpath = out / JSON_NAME
    if jpath.is_file():
        spec = read_spec(out)
    else:
        spec = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "config": SegConfig(arch=MEDSAM_ARCH, threshold=0.5).to_dict(),
        }
    spec["litemedsam"] = {
        "source": doc.get("source"),
        "checkpoint_sha256": doc.get("checkpoint_sha256"),
        "carried": bool(carry),
        "sha256": {n: doc["sha256"][n] for n in (ENCODER_NAME, DECODER_NAME)},
    }
    from buscad.segment.medsam import default_confidence

    rule = default_confidence(doc.get("checkpoint_sha256"))
    if rule is not None:  # the predicted-Dice calibration travels with the segmenter
        spec["litemedsam"]["confidence"] = rule.doc
    atomic_write_json(jpath, spec)
    return out


def _load_detector(
    jpath: Path, spec: dict, box_model: MedSAM | None, threads: int | None
) -> Detector | None:
    """The segmenter's lesion detector (``detector/``), checked against the JSON and the encoder."""
    from buscad.segment import detector as dt

    ref = spec.get("detector")
    folder = jpath.parent / dt.DETECTOR_DIR
    if ref is None and not folder.is_dir():
        return None
    if not folder.is_dir():
        raise ModelFileError(
            folder, f"{jpath.name} names a lesion detector but the folder is missing"
        )
    if box_model is None:
        raise ModelFileError(
            folder, "a lesion detector needs LiteMedSAM (run `buscad segment medsam`)"
        )
    want = (ref or {}).get("json_sha256")
    if want and file_sha256(folder / dt.JSON_NAME) != want:
        raise ModelFileError(folder / dt.JSON_NAME, f"SHA-256 does not match {jpath.name}")
    return dt.Detector.load(folder, encoder_sha256=box_model.model_hash, threads=threads)


def add_detector(folder: str | os.PathLike[str], detector: str | os.PathLike[str]) -> Path:
    """Give a segmenter folder with LiteMedSAM a lesion detector (copied into ``folder/detector``).

    The detector becomes the folder's automatic proposer. ``detector`` is a
    detector folder (:func:`buscad.segment.detector_train.save_detector`); it is
    checked (digests, encoder) before the JSON records it.

    Raises
    ------
    ModelFileError
        ``folder`` has no LiteMedSAM, or the detector does not load or was trained
        on another encoder's embeddings.
    """
    import shutil

    from buscad.segment import detector as dt

    out = Path(folder)
    spec = read_spec(out)
    box_model = _load_box_model(_sidecar_paths(out)[0], spec, 1)
    if box_model is None:
        raise ModelFileError(out, "a lesion detector needs LiteMedSAM in the segmenter folder")
    src, dest = Path(detector), out / dt.DETECTOR_DIR
    det = dt.Detector.load(src, encoder_sha256=box_model.model_hash)
    if src.resolve() != dest.resolve():
        dest.mkdir(parents=True, exist_ok=True)
        for name in (dt.JSON_NAME, dt.ONNX_NAME, dt.WEIGHTS_NAME):
            if (src / name).is_file():
                shutil.copyfile(src / name, dest / name)
    spec["detector"] = {
        "folder": dt.DETECTOR_DIR,
        "json_sha256": file_sha256(dest / dt.JSON_NAME),
        "encoder_sha256": det.encoder_sha256,
        "rule": det.rule.to_dict(),
    }
    atomic_write_json(_sidecar_paths(out)[0], spec)
    return out


def box_candidate(
    prob: np.ndarray, box: Box, threshold: float = 0.5, iou: float | None = None
) -> Candidate:
    """The outline of a box prompt from a probability map.

    The connected component of ``prob > threshold`` that overlaps ``box`` most,
    holes filled (empty when none overlaps). Its confidence is ``iou`` clipped to
    ``[0, 1]`` when given (LiteMedSAM's IoU head), else the mean probability inside.
    """
    lab, n = components(prob > threshold)
    mask = np.zeros(prob.shape, bool)
    if n:
        inside = lab[box[1] : box[3], box[0] : box[2]]
        counts = np.bincount(inside.ravel(), minlength=n + 1)[1:]
        if counts.max() > 0:
            mask = fill_holes(lab == int(np.argmax(counts)) + 1)
    if not mask.any():
        conf = 0.0
    elif iou is not None:
        conf = float(np.clip(iou, 0.0, 1.0))
    else:
        conf = float(prob[mask].mean())
    return Candidate(mask_box(mask) or box, mask, conf)


class Segmenter:
    """Lesion outlines from a gray image, with or without a box.

    Parameters
    ----------
    runner : callable or None
        ``runner(x)`` maps float32 ``(N, 2, S, S)`` inputs to logits ``(N, 1, S, S)``;
        None for a box-only segmenter (LiteMedSAM without a U-Net).
    config : SegConfig
        Architecture and inference settings.
    spec : dict, optional
        The model JSON (provenance, training record).
    module : torch.nn.Module, optional
        The PyTorch network, when loaded with the torch backend (needed to export ONNX).
    box_model : MedSAM, optional
        LiteMedSAM: draws every box-prompted outline when given.
    detector : Detector, optional
        Lesion detector on LiteMedSAM's embedding: the automatic proposer when
        given (needs ``box_model``).
    """

    def __init__(
        self,
        runner: Runner | None,
        config: SegConfig,
        spec: dict | None = None,
        module: Any = None,
        box_model: MedSAM | None = None,
        detector: Detector | None = None,
    ) -> None:
        self.runner = runner
        self.config = config
        self.spec = spec or {}
        self.module = module
        self.box_model = box_model
        self.detector = detector

    @property
    def can_auto(self) -> bool:
        """Whether it finds lesions without a box (a U-Net, or a detector with LiteMedSAM)."""
        return self.runner is not None or (self.detector is not None and self.box_model is not None)

    @property
    def proposer(self) -> str | None:
        """The automatic proposer: ``"detector"``, ``"unet"`` or None (boxes only)."""
        if self.detector is not None and self.box_model is not None:
            return "detector"
        return "unet" if self.runner is not None else None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        backend: str = "auto",
        threads: int | None = None,
        checked: dict[str, str] | None = None,
    ) -> Segmenter:
        """Load a saved segmenter.

        Parameters
        ----------
        path : path-like
            A segmenter folder (``segmenter.json`` with ``segmenter.safetensors``
            and/or ``segmenter.onnx``) or one of those files.
        backend : {"auto", "onnx", "torch"}
            ``"onnx"`` never imports torch; ``"auto"`` picks ONNX when the file exists.
        threads : int, optional
            Intra-op threads of ONNX Runtime.
        checked : dict, optional
            ``{file name: SHA-256}`` of LiteMedSAM's graphs the caller has just hashed
            (a bundle checks them against ``bundle.json``): compared with their manifest
            instead of hashing them again.

        Raises
        ------
        ModelFileError
            Missing or incompatible files.
        """
        spec = read_spec(path)
        jpath, wpath, opath = _sidecar_paths(path)
        config = SegConfig.from_dict(spec.get("config", {}))
        box_model = _load_box_model(jpath, spec, threads, checked)
        detector = _load_detector(jpath, spec, box_model, threads)
        if config.arch == MEDSAM_ARCH:
            if box_model is None:
                raise ModelFileError(jpath, "a LiteMedSAM segmenter without its litemedsam/ graphs")
            return cls(None, config, spec, box_model=box_model, detector=detector)
        if backend == "auto":
            backend = "onnx" if opath.is_file() else "torch"
        if backend == "onnx":
            if not opath.is_file():
                raise ModelFileError(opath, "ONNX file not found (run `buscad segment export`)")
            return cls(OnnxRunner(opath, threads), config, spec, None, box_model, detector)
        if backend == "torch":
            from buscad.segment.model import load_module, torch_runner

            module = load_module(wpath, config)
            return cls(torch_runner(module), config, spec, module, box_model, detector)
        raise ModelFileError(jpath, f"unknown backend {backend!r} (auto, onnx or torch)")

    def save(self, path: str | os.PathLike[str], extra: dict | None = None) -> Path:
        """Write ``segmenter.safetensors`` + ``segmenter.json`` into folder ``path``."""
        from buscad.segment.model import save_module

        if self.module is None:
            raise ModelFileError(path, "only a PyTorch-backed segmenter can be saved")
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        save_module(self.module, out / WEIGHTS_NAME)
        self.spec = {
            **self.spec,
            **(extra or {}),
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "weights_sha256": file_sha256(out / WEIGHTS_NAME),
        }
        atomic_write_json(out / JSON_NAME, self.spec)
        return out

    def export_onnx(self, path: str | os.PathLike[str], opset: int = 17) -> Path:
        """Export the network to ONNX; a folder gets ``segmenter.onnx`` and the JSON updated.

        A file path gets the ONNX file plus a JSON sidecar of the same stem.
        """
        from buscad.segment.onnx import export_module

        if self.module is None:
            raise ModelFileError(path, "ONNX export needs the PyTorch weights (backend='torch')")
        p = Path(path)
        if p.is_dir() or not p.suffix:
            p.mkdir(parents=True, exist_ok=True)
            onnx_path, json_path = p / ONNX_NAME, p / JSON_NAME
        else:
            onnx_path, json_path = p, p.with_suffix(".json")
        export_module(self.module, onnx_path, self.config.input_size, opset=opset)
        self.spec = {
            **self.spec,
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "onnx": {"opset": opset, "sha256": file_sha256(onnx_path)},
        }
        atomic_write_json(json_path, self.spec)
        return onnx_path

    # ---------------------------------------------------------------- inference
    def logits(self, x: np.ndarray) -> np.ndarray:
        """Raw network output for a float32 ``(N, 2, S, S)`` batch."""
        if self.runner is None:
            raise ModelFileError(
                self.spec.get("path", JSON_NAME),
                "this segmenter outlines inside a box only (LiteMedSAM without a proposer): "
                "give a box",
            )
        return np.asarray(self.runner(x), dtype=np.float32)

    def _prob(self, norm: np.ndarray, box: Sequence[float] | None) -> tuple[np.ndarray, Box]:
        x, crop = make_input(norm, self.config.input_size, box, self.config.margin)
        p = sigmoid(self.logits(x[None])[0, 0])
        return paste(p, crop, norm.shape), crop

    def _box_outline(
        self, norm: np.ndarray, box: Sequence[float], gray: np.ndarray | None = None
    ) -> tuple[np.ndarray, Candidate]:
        """Outline of a box prompt: the thresholded component overlapping the box most.

        LiteMedSAM draws it when the segmenter has one (its IoU head is the
        confidence), else the U-Net's crop pass (mean probability inside).
        """
        h, w = norm.shape
        bx = clip_box(box, (h, w))
        iou = None
        if self.box_model is not None:
            logit, iou = self.box_model.logits(norm if gray is None else gray, bx)
            prob = sigmoid(logit)
        else:
            prob, _ = self._prob(norm, box)
        cand = box_candidate(prob, bx, self.config.threshold, iou)
        rule = getattr(self.box_model, "confidence", None)
        if iou is not None and rule is not None and cand.mask.any():
            cand.predicted_dice = rule.predicted_dice(iou)
            cand.flagged = rule.flagged(cand.predicted_dice)
        return prob, cand

    def predict(
        self,
        gray: np.ndarray,
        box: Sequence[float] | None = None,
        point: Sequence[float] | None = None,
    ) -> SegResult:
        """Outline the lesion in a box, at a click, or find lesions in the whole image.

        Parameters
        ----------
        gray : numpy.ndarray
            ``(H, W)`` grayscale image (``uint8``, ``uint16`` or float).
        box : sequence of float, optional
            ``(x0, y0, x1, y1)`` prompt; sloppy boxes are expected.
        point : sequence of float, optional
            ``(x, y)`` click: the automatic candidate containing it, else a box of
            a quarter of the shorter image side centred on it.

        Returns
        -------
        SegResult
        """
        norm = normalise(gray)
        h, w = norm.shape
        if box is not None:
            b = clip_box(box, (h, w))
            prob, cand = self._box_outline(norm, b, gray)
            found = bool(cand.mask.any())
            return SegResult(cand.mask, prob, [cand] if found else [], found, "box")
        auto = self._auto(norm, gray)
        if point is None:
            return auto
        px, py = int(np.clip(point[0], 0, w - 1)), int(np.clip(point[1], 0, h - 1))
        for c in auto.candidates:
            if c.mask[py, px]:
                return SegResult(c.mask, auto.prob, [c], True, "box")
        half = 0.125 * min(h, w)
        return self.predict(gray, box=(px - half, py - half, px + half, py + half))

    def _detect(self, norm: np.ndarray, gray: np.ndarray | None = None) -> SegResult:
        """Automatic candidates of the lesion detector, outlined by LiteMedSAM.

        ``prob`` is the detector's heat-map resized to the image (LiteMedSAM's
        post-processing: the 64-cell grid to the 256 frame, cropped, resized).
        """
        import cv2

        from buscad.segment.medsam import SIZE, postprocess

        assert self.detector is not None and self.box_model is not None
        g = norm if gray is None else gray
        emb = self.box_model.embed(g)
        heat = self.detector.heat(emb.array)
        drawn: dict[tuple[int, ...], Candidate] = {}  # a box two components share is decoded once

        def outline(b: tuple[int, int, int, int]) -> Candidate:
            key = tuple(int(v) for v in b)
            if key not in drawn:
                drawn[key] = self._box_outline(norm, b, gray)[1]
            return drawn[key]

        cands = self.detector.propose(emb.array, emb.shape, outline, heat=heat)
        heat256 = cv2.resize(heat, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        prob = np.clip(postprocess(heat256, emb.new_size, emb.shape), 0.0, 1.0)
        mask = np.zeros(norm.shape, bool)
        for c in cands:
            mask |= c.mask
        return SegResult(mask, prob.astype(np.float32), cands, bool(cands), "auto")

    def _auto(self, norm: np.ndarray, gray: np.ndarray | None = None) -> SegResult:
        if self.proposer == "detector":
            return self._detect(norm, gray)
        cfg = self.config
        h, w = norm.shape
        prob, _ = self._prob(norm, None)
        lab, n = components(prob > cfg.threshold)
        cands: list[Candidate] = []
        if n:
            idx = np.arange(1, n + 1)
            areas = np.bincount(lab.ravel(), minlength=n + 1)[1:]
            means = np.bincount(lab.ravel(), prob.ravel(), minlength=n + 1)[1:] / np.maximum(
                areas, 1
            )
            for k, area, conf in zip(idx, areas, means, strict=True):
                if area < cfg.min_area * h * w or conf < cfg.confidence_threshold:
                    continue
                m = fill_holes(lab == k)
                cands.append(Candidate(mask_box(m), m, float(conf)))  # type: ignore[arg-type]
        cands.sort(key=lambda c: -c.confidence)
        cands = cands[: cfg.max_candidates]
        if cfg.refine:
            refined = []
            for c in cands:
                _, r = self._box_outline(norm, c.box, gray)
                refined.append(
                    Candidate(r.box, r.mask, c.confidence, r.predicted_dice, r.flagged)
                    if r.mask.any()
                    else c
                )
            cands = refined
        mask = np.zeros((h, w), bool)
        for c in cands:
            mask |= c.mask
        return SegResult(mask, prob, cands, bool(cands), "auto")
