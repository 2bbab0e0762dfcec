"""Types shared by the model bundle, ``buscad predict`` and the web app.

A *prediction* for one image holds the AI score (the headline model's
probability of malignancy), the decision at that model's threshold, a
BI-RADS-aligned likelihood band (decision support only), each model's own
score, the region used, and optionally the CNN's Grad-CAM heatmap in full-image
coordinates. The headline model is the study's (``headline_model`` in
``bundle.json``) when the image's inputs let it score, else the CNN.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

#: ACR BI-RADS 5th edition likelihood-of-malignancy ranges of the assessment
#: categories, used to label the AI score: 3 is (0, 2%], 4A (2, 10%], 4B (10, 50%],
#: 4C (50, 95%) and 5 [95, 100%]. Each entry: (category, low, high, text).
LIKELIHOOD_BANDS: tuple[tuple[str, float, float, str], ...] = (
    ("3", 0.0, 0.02, "≤ 2%: probably benign range"),
    ("4A", 0.02, 0.10, "> 2% to ≤ 10%: low suspicion range"),
    ("4B", 0.10, 0.50, "> 10% to ≤ 50%: moderate suspicion range"),
    ("4C", 0.50, 0.95, "> 50% to < 95%: high suspicion range"),
    ("5", 0.95, 1.0, "≥ 95%: highly suggestive of malignancy range"),
)

DECISION_SUPPORT_NOTE = (
    "Decision support only: the band maps the model's probability onto BI-RADS likelihood ranges; "
    "it is not a BI-RADS assessment and does not replace the reader's."
)


@dataclass(frozen=True)
class LikelihoodBand:
    """The BI-RADS likelihood range an AI score falls in."""

    category: str
    low: float
    high: float
    text: str
    note: str = DECISION_SUPPORT_NOTE


def _pct(p: float) -> str:
    return f"{100 * p:.1f}%"


def decision_text(decision: str, threshold: float) -> str:
    """The AI call at the decision threshold, in the words every screen uses.

    The one wording shared by ``buscad predict``, the web app (``decision_text``
    in its JSON) and the case report, e.g. ``"AI call: not flagged (score below the
    model's 40.0% threshold)"``. It says which side of the model's threshold the
    score is on, never "benign" or "malignant": the likelihood band
    (:func:`band_text`) says how suspicious the score is, so the two cannot
    contradict each other (a score below a 40% threshold can still be in the 4B
    range; see :func:`borderline_reason`).
    """
    if decision == "malignant":
        return f"AI call: flagged (score at or above the model's {_pct(threshold)} threshold)"
    return f"AI call: not flagged (score below the model's {_pct(threshold)} threshold)"


#: A score within this distance of the threshold is borderline (:func:`borderline_reason`).
BORDERLINE_MARGIN = 0.05


def borderline_reason(ai_score: float, threshold: float) -> str | None:
    """Why a call is borderline, in words, or None.

    Borderline when ``|p - t| < BORDERLINE_MARGIN`` (5 percentage points), or when
    the call and the band point different ways: flagged (``p >= t``) in band 3
    (``p <= 2%``, probably benign range), or not flagged (``p < t``) in band 4C or
    5 (``p > 50%``, high suspicion range).
    """
    band = likelihood_band(ai_score).category
    flagged = ai_score >= threshold
    if (flagged and band == "3") or (not flagged and band in ("4C", "5")):
        return (
            f"borderline: the call (threshold {_pct(threshold)}) and the band ({band}) "
            "point different ways; read the band"
        )
    if abs(ai_score - threshold) < BORDERLINE_MARGIN:
        return (
            f"borderline: the score is within {100 * BORDERLINE_MARGIN:.0f} points of the "
            f"{_pct(threshold)} threshold"
        )
    return None


def band_text(band: LikelihoodBand) -> str:
    """The likelihood band in the words every screen uses, e.g. ``"4B (> 10% to ≤ 50%: ...)"``."""
    return f"{band.category} ({band.text})"


def roi_text(
    source: str,
    confidence: float | None = None,
    accepted: bool = False,
    predicted_dice: float | None = None,
    flagged: bool = False,
) -> str:
    """Where the region the models read came from, in the words every screen uses.

    ``source`` is :attr:`Prediction.roi_source`; ``confidence`` the segmenter's
    (None: no outline was predicted); ``accepted``: the user saw the segmenter's
    outline and accepted it (:attr:`Prediction.roi_accepted`). E.g. ``"the lesion
    outlined automatically by the bundle's segmenter (confidence 0.87), accepted
    by the user"``. With ``predicted_dice`` (a LiteMedSAM outline) the parenthesis
    gives it, e.g. ``"(confidence 0.93, predicted Dice 0.95)"``, and ``flagged``
    adds ``"flagged: check or redraw"``.
    """
    parts = [] if confidence is None else [f"confidence {confidence:.2f}"]
    if predicted_dice is not None:
        parts.append(f"predicted Dice {predicted_dice:.2f}")
    if flagged:
        parts.append("flagged: check or redraw")
    conf = f" ({', '.join(parts)})" if parts else ""
    seen = ", accepted by the user" if accepted else ", not shown to the user before the analysis"
    if source == "mask":
        return "the lesion mask given with the image (drawn by a person)"
    if source == "box":
        if confidence is None:
            return "the box drawn on the image"
        return f"the segmenter's outline inside the box drawn on the image{conf}{seen}"
    if source == "auto":
        return f"the lesion outlined automatically by the bundle's segmenter{conf}{seen}"
    if source == "whole":
        return "the whole image (no box, mask or outline was given)"
    return source


def result_text(ai_score: float, decision: str, threshold: float, band: LikelihoodBand) -> str:
    """Score, AI call, likelihood band and borderline flag in one line (no model name)."""
    line = (
        f"{_pct(ai_score)} · likelihood band {band_text(band)} · "
        f"{decision_text(decision, threshold)}"
    )
    why = borderline_reason(ai_score, threshold)
    return f"{line} · {why}" if why else line


def assessment_text(
    ai_score: float,
    decision: str,
    threshold: float,
    band: LikelihoodBand,
    model: str,
    cautions: list[str] | tuple[str, ...] = (),
    withheld: bool = False,
) -> str:
    """The one headline every screen shows: "AI assessment (MODEL): ...".

    Withheld (``withheld``): ``"AI assessment by the MODEL withheld: CAUTION; CAUTION."``
    with no score, band or call. Otherwise ``"AI assessment by the MODEL: "`` and
    :func:`result_text`, preceded by ``"unreliable for this image: CAUTIONS."`` when
    there are cautions.
    """
    from buscad.labels import model_label

    head = f"AI assessment by the {model_label(model)}"
    if withheld:
        return f"{head} withheld: " + "; ".join(cautions) + "."
    warn = f" unreliable for this image: {'; '.join(cautions)}." if cautions else ""
    return f"{head}:{warn} {result_text(ai_score, decision, threshold, band)}"


#: Where a model input came from (:attr:`Prediction.inputs`).
INPUT_ENTERED = "entered"
INPUT_COMPUTED = "computed from the outline"
INPUT_NONE = "none"


def input_sources(
    columns: list[str],
    entered: dict[str, Any],
    computed: dict[str, Any],
    outline_columns: Any = (),
) -> list[dict[str, Any]]:
    """Each input column with its value and source (entered, computed from the outline, none).

    An entered value wins over a computed one, as in the models' input table.
    ``outline`` is True for the columns of ``outline_columns`` (measures the
    bundle computes from the lesion outline, never asks for).
    """
    from buscad.labels import input_label

    outline = set(outline_columns)
    out = []
    for c in dict.fromkeys(columns):
        if c in entered:
            value, source = entered[c], INPUT_ENTERED
        elif c in computed:
            value, source = computed[c], INPUT_COMPUTED
        else:
            value, source = None, INPUT_NONE
        if isinstance(value, np.generic):
            value = value.item()
        out.append(
            {
                "name": c,
                "label": input_label(c),
                "value": value,
                "source": source,
                "outline": c in outline,
            }
        )
    return out


def likelihood_band(p: float) -> LikelihoodBand:
    """Map a probability of malignancy to its BI-RADS-aligned band.

    Bands follow the ACR BI-RADS ultrasound likelihood ranges: 3 (≤ 2%),
    4A (2–10%), 4B (10–50%), 4C (50–95%), 5 (≥ 95%).
    """
    if np.isnan(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"probability must be within [0, 1], got {p!r}")
    # upper bounds are inclusive for 3, 4A, 4B; 4C excludes 95%, which is 5
    idx = 0 if p <= 0.02 else 1 if p <= 0.10 else 2 if p <= 0.50 else 3 if p < 0.95 else 4
    cat, lo, hi, text = LIKELIHOOD_BANDS[idx]
    return LikelihoodBand(cat, lo, hi, text)


@dataclass
class Prediction:
    """What a bundle says about one image.

    Attributes
    ----------
    ai_score : float
        Probability of malignancy from the headline model (``primary_model``): the
        calibrated CNN score, or the study's headline model's own probability.
    primary_model : str
        Which model gives ``ai_score``, the band and the call: the headline model
        (``headline_model`` in the JSON). ``model_scores`` holds every model's score
        under its own name, the CNN's under ``deep`` whichever model is the headline.
    threshold : float
        Decision threshold on ``ai_score``: the headline model's Youden threshold on its
        out-of-fold training scores.
    decision : str
        ``malignant`` when ``ai_score >= threshold`` else ``benign``.
    band : LikelihoodBand
        BI-RADS-aligned likelihood band of ``ai_score`` (decision support only).
    model_scores : dict
        Each model's malignant probability (None when it could not run).
    skipped_models : dict
        Model name -> why it did not run (e.g. missing clinical inputs).
    reader_models : list of str
        The models that read the reader's own BI-RADS category (``reads_reader`` in
        ``bundle.json``; empty unless the study set ``clinical.reader_as_input``),
        shown as "uses the reader's BI-RADS".
    roi : tuple of int
        ``(x0, y0, x1, y1)`` of the region the models read, in image pixels.
    roi_source : str
        ``mask`` (given), ``auto`` (the bundle's segmenter found the lesion), ``box``
        (the given box, or the segmenter's outline inside it) or ``whole`` (the whole image).
    roi_confidence : float or None
        The segmenter's confidence in its outline (mean lesion probability inside
        it, or LiteMedSAM's IoU-head estimate, in [0, 1]); None when no outline was
        predicted.
    predicted_dice : float or None
        The outline's predicted Dice with the true lesion (calibrated LiteMedSAM
        IoU head, :class:`buscad.segment.medsam.OutlineConfidence`); None when no
        outline was predicted or the segmenter has no calibrated estimate.
    outline_flagged : bool
        ``predicted_dice`` is below the calibration's flag threshold: the outline
        should be checked or redrawn (a caution says so).
    roi_accepted : bool
        The segmenter's outline (``roi_source`` ``auto`` or ``box``) was shown to the
        user, who accepted it before the models read it (the web app's outline on
        open); False when the outline was used without being shown.
    notes : list of str
        What the reader should know (e.g. no lesion found, whole image read).
    outline : numpy.ndarray or None
        Boolean ``(H, W)`` predicted outline (not in the JSON).
    heatmap : numpy.ndarray or None
        The CNN's Grad-CAM (whichever model is the headline): ``(H, W)`` float32 in
        [0, 1], full-image coordinates, zero outside the ROI.
    timings_ms : dict
        Stage timings.
    inputs : list of dict
        Every clinical, lexicon and outline input the bundle's models read: ``name``,
        ``label``, ``value``, ``source`` (:data:`INPUT_ENTERED`, :data:`INPUT_COMPUTED`
        or :data:`INPUT_NONE`) and ``outline`` (a measure of the outline); see
        :func:`input_sources`.
    cautions : list of str
        Why the AI call should not be trusted for this image, in words, most serious
        first (docs/safety.md): the image is unlike the training images, a colour
        (Doppler) image, no lesion found, the model failed the study's checks, text
        over or near the region read, the Grad-CAM peak on text or outside the region.
    withheld : bool
        The AI call is withheld: the headline gives the cautions and no score, band or
        call (``ai_score``, ``decision`` and ``band`` stay in the JSON for audit only).
    banner : str or None
        What every screen shows first about the bundle itself (the phantom banner).
    training : str
        What the bundle was trained on, in words (or "provenance unknown").
    ood_ratio : float or None
        The image's feature distance over the training limit (> 1: unlike the training
        images); None when the bundle has no out-of-distribution model.
    model_thresholds : dict
        Each other model's own threshold (Youden on its out-of-fold training scores;
        the CNN's, ``deep``, when another model is the headline).
    model_flags : dict
        Model name -> what the study found broken about it (e.g. constant scores).
    headline_note : str or None
        Why the study's headline model (``headline_model`` in ``bundle.json``) does not
        give the AI assessment for this image (not in the bundle, or it could not
        score the image) and the CNN does instead; None when it does, or when the
        bundle names no headline model.
    """

    ai_score: float
    primary_model: str
    threshold: float
    decision: str
    band: LikelihoodBand
    model_scores: dict[str, float | None]
    skipped_models: dict[str, str] = field(default_factory=dict)
    reader_models: list[str] = field(default_factory=list)
    roi: tuple[int, int, int, int] = (0, 0, 0, 0)
    roi_source: str = "whole"
    roi_confidence: float | None = None
    predicted_dice: float | None = None
    outline_flagged: bool = False
    roi_accepted: bool = False
    notes: list[str] = field(default_factory=list)
    outline: np.ndarray | None = None
    heatmap: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    cautions: list[str] = field(default_factory=list)
    withheld: bool = False
    banner: str | None = None
    training: str = ""
    ood_ratio: float | None = None
    model_thresholds: dict[str, float] = field(default_factory=dict)
    model_flags: dict[str, list[str]] = field(default_factory=dict)
    headline_note: str | None = None

    @property
    def borderline(self) -> str | None:
        """Why the call is borderline (:func:`borderline_reason`), or None."""
        return None if self.withheld else borderline_reason(self.ai_score, self.threshold)

    @property
    def assessment_text(self) -> str:
        """The headline (:func:`assessment_text`)."""
        return assessment_text(
            self.ai_score,
            self.decision,
            self.threshold,
            self.band,
            self.primary_model,
            self.cautions,
            self.withheld,
        )

    @property
    def others_text(self) -> str:
        """One sentence on the other models: whether they agree with the headline's call.

        A model agrees when its score is on the same side of its own threshold
        (``model_thresholds``) as the AI score is of the headline model's. Preceded by
        ``headline_note`` (why the study's headline model is not the headline) when set.
        """
        text = self._others_text()
        if self.headline_note:
            from buscad.labels import model_label

            lead = f"The {model_label(self.primary_model)} gives the AI assessment"
            return f"{lead}: {self.headline_note}. {text}"
        return text

    def _others_text(self) -> str:
        from buscad.labels import model_label

        flagged = self.ai_score >= self.threshold
        ran = {
            n: s
            for n, s in self.model_scores.items()
            if n != self.primary_model and s is not None and n in self.model_thresholds
        }
        if not ran:
            return "No other model gave a score for this image."
        if self.withheld:
            return (
                f"The AI call is withheld: the {len(ran)} other "
                + ("models' scores are" if len(ran) > 1 else "model's score is")
                + " shown for reference only (they read the same image)."
            )
        differ = [n for n, s in ran.items() if (s >= self.model_thresholds[n]) != flagged]
        many = "models" if len(ran) > 1 else "model"
        if not differ:
            return f"The {len(ran)} other {many} agree with the call at their own thresholds."
        names = ", ".join(f"{model_label(n)} {_pct(ran[n])}" for n in differ)
        side = "below" if flagged else "at or above"
        return (
            f"{len(differ)} of {len(ran)} other {many} disagree (score {side} their own "
            f"threshold): {names}. The headline follows the {model_label(self.primary_model)}."
        )

    def with_cautions(self, cautions: list[str], withhold: bool) -> Prediction:
        """A copy with ``cautions`` added (first when ``withhold``) and the call withheld if asked."""
        import dataclasses

        new = [c for c in cautions if c not in self.cautions]
        merged = [*new, *self.cautions] if withhold else [*self.cautions, *new]
        return dataclasses.replace(self, cautions=merged, withheld=self.withheld or withhold)

    @property
    def decision_text(self) -> str:
        """The AI call in words (:func:`decision_text`)."""
        return decision_text(self.decision, self.threshold)

    @property
    def band_text(self) -> str:
        """The likelihood band in words (:func:`band_text`)."""
        return band_text(self.band)

    @property
    def roi_text(self) -> str:
        """Where the region read came from, in words (:func:`roi_text`)."""
        return roi_text(
            self.roi_source,
            self.roi_confidence,
            self.roi_accepted,
            self.predicted_dice,
            self.outline_flagged,
        )

    def text(self) -> str:
        """One line: the banner, then the headline (:func:`assessment_text`)."""
        return (f"[{self.banner}] " if self.banner else "") + self.assessment_text

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (the heatmap and the outline are left out: they are served as images).

        Besides the fields: ``assessment_text`` (the headline), ``decision_text``,
        ``band_text``, ``borderline``, ``others_text`` and ``roi_text``, the wording
        every screen shows, ``headline_model`` (the model giving ``ai_score``, the band
        and the call: ``primary_model``) and ``model_labels``: each model's plain name.
        """
        from buscad.labels import model_label

        d = asdict(self)
        d.pop("heatmap")
        d.pop("outline")
        d["roi"] = list(self.roi)
        d["decision_text"] = self.decision_text
        d["band_text"] = self.band_text
        d["roi_text"] = self.roi_text
        d["assessment_text"] = self.assessment_text
        d["borderline"] = self.borderline
        d["others_text"] = self.others_text
        d["headline_model"] = self.primary_model
        names = [*self.model_scores, *self.skipped_models]
        d["model_labels"] = {n: model_label(n) for n in names}
        return d


class Predictor(Protocol):
    """What ``buscad predict`` and the web app need from a bundle."""

    name: str
    threshold: float
    primary_model: str
    model_names: list[str]
    clinical_inputs: list[str]

    def predict(
        self,
        gray: np.ndarray,
        mask: np.ndarray | None = None,
        box: tuple[int, int, int, int] | None = None,
        clinical: dict[str, Any] | None = None,
        heatmap: bool = True,
    ) -> Prediction:
        """Score one grayscale image; ``mask`` wins over ``box``; neither = whole image."""
        ...


@dataclass
class Outline:
    """A segmenter's outline of one image (:meth:`buscad.bundle.Bundle.outline`).

    Unpacks as ``mask, confidence, note = outline``.

    Attributes
    ----------
    mask : numpy.ndarray or None
        Boolean ``(H, W)``; None when no lesion was found.
    confidence : float or None
        The segmenter's confidence (mean probability inside, or LiteMedSAM's IoU head).
    note : str or None
        What the user should know (no lesion found, several candidates).
    predicted_dice : float or None
        Calibrated predicted Dice (LiteMedSAM outlines), else None.
    flagged : bool
        ``predicted_dice`` below ``threshold``: check or redraw the outline.
    threshold : float or None
        The flag threshold of the segmenter's calibration.
    """

    mask: np.ndarray | None
    confidence: float | None
    note: str | None
    predicted_dice: float | None = None
    flagged: bool = False
    threshold: float | None = None

    def __iter__(self) -> Iterator[Any]:
        """``mask, confidence, note``."""
        return iter((self.mask, self.confidence, self.note))


class Outliner(Protocol):
    """What a predictor with a lesion segmenter adds (:class:`buscad.bundle.Bundle` has it).

    The web app outlines the lesion when an image is opened through
    :meth:`outline` (the same outline ``predict`` reads when no mask is given) and
    turns the automatic outline off with ``predict(..., auto_roi=False)``.
    """

    has_segmenter: bool

    def outline(self, gray: np.ndarray, box: tuple[int, int, int, int] | None = None) -> Outline:
        """:class:`Outline` (unpacks as ``mask, confidence, note``): box-prompted with a box, else automatic."""
        ...
