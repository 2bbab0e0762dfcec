"""Plain-language names of buscad's models and model inputs, shared by reports, the CLI and the app.

The code, configs and bundle files keep the short names (``dlr``, ``cldlr``, ``us``,
``posterior_features``); everything a clinician reads shows :func:`model_label` (or
:func:`input_label`) with the short name as a tooltip or in brackets. No imports
beyond the standard library: the web app and ``buscad predict`` use it without pandas.
"""

from __future__ import annotations

#: Short model name -> (plain label, one-line description).
MODELS: dict[str, tuple[str, str]] = {
    "deep": (
        "Deep-learning model (CNN)",
        "CNN on the lesion crop; its calibrated malignant probability",
    ),
    "radiomics": (
        "Radiomics score",
        "radiomics features (ICC-stable, LASSO-selected) in a logistic rad-score",
    ),
    "dlr": ("Deep-feature SVM (DLR)", "deep-learning radiomics: the CNN's features in an SVM"),
    "clinical": ("Clinical model", "logistic regression on the selected clinical variables"),
    "us": (
        "Ultrasound-features model",
        "logistic regression on the BI-RADS lexicon descriptors",
    ),
    "cldlr": (
        "Clinical + deep features (CLDLR)",
        "clinical variables and the CNN's features in one model",
    ),
    "outline": (
        "Outline descriptors",
        "shape, margin and echo descriptors computed from the lesion outline",
    ),
    "medsam": (
        "LiteMedSAM image features",
        "a medical foundation model's image embedding inside, around and below the lesion "
        "outline, in a logistic regression",
    ),
    "integrated": ("Integrated model (fusion)", "fusion of the single models' scores"),
    "integrated_without_reader": (
        "Integrated model without the reader",
        "fusion of the single models that do not read the reader's BI-RADS",
    ),
    "reader BI-RADS": ("Radiologist (BI-RADS)", "the reader's own BI-RADS category"),
    "shortcut: mask geometry": (
        "Reference: outline geometry only",
        "size and shape of the outline alone; a model should beat it",
    ),
    "shortcut: image size": (
        "Reference: image size only",
        "image width and height alone; a model scoring well here learnt a shortcut",
    ),
}


#: Label of a model that reads the radiologist's own BI-RADS category
#: (``clinical.reader_as_input: true``; ``reads_reader`` in ``bundle.json``).
READS_READER = "uses the reader's BI-RADS"


def model_label(name: str) -> str:
    """Plain label of a model's short name (the name itself when unknown)."""
    return MODELS.get(name, (name, ""))[0]


def model_description(name: str) -> str:
    """One-line description of a model (empty when unknown)."""
    return MODELS.get(name, (name, ""))[1]


#: Manifest column -> plain label of a clinical or BI-RADS lexicon input.
INPUTS: dict[str, str] = {
    "age": "Age (years)",
    "birads": "Radiologist's BI-RADS category",
    "shape": "Shape",
    "margin": "Margin",
    "echogenicity": "Echo pattern",
    "posterior_features": "Posterior features",
    "calcifications": "Calcifications",
    "orientation": "Orientation",
    "halo": "Echogenic halo",
    "skin_thickening": "Skin thickening",
    "log_area": "Outline area (log)",
    "area_fraction": "Outline area / image area",
    "bbox_width": "Outline box width",
    "bbox_height": "Outline box height",
    "bbox_cx": "Outline box centre (x)",
    "bbox_cy": "Outline box centre (y)",
}

#: Measures computed from the outline (``morph_<name>``) -> the words a clinician reads:
#: :func:`buscad.segment.descriptors.lesion_descriptors` (``sm_*``, ``echo_*``) and
#: :class:`buscad.segment.morphology.Morphology`. No internal name reaches a screen.
OUTLINE_MEASURES: dict[str, str] = {
    "sm_solidity": "Outline solidity (smoothed outline)",
    "sm_convexity": "Outline convexity (smoothed outline)",
    "sm_circularity": "Outline circularity (smoothed outline)",
    "sm_axis_ratio": "Outline long-to-short axis ratio",
    "sm_depth_width": "Outline depth-to-width ratio",
    "sm_ellipse_misfit": "Outline departure from an ellipse",
    "sm_hf_energy": "Outline lobulation",
    "sm_angle": "Outline tilt from horizontal (degrees)",
    "echo_lesion_ring": "Lesion brightness relative to the tissue around it",
    "echo_lesion_image": "Lesion brightness relative to the whole image",
    "echo_cv": "Lesion echo heterogeneity",
    "echo_posterior": "Posterior enhancement or shadowing",
    "echo_posterior_lesion": "Tissue below the lesion relative to the lesion",
    "echo_edge": "Margin sharpness",
    "echo_dark_frac": "Share of very dark lesion pixels",
    "echo_entropy": "Lesion echo texture (entropy)",
    "shape": "Shape computed from the outline",
    "orientation": "Orientation computed from the outline",
    "margin": "Margin computed from the outline",
    "area_px": "Outline area (pixels)",
    "solidity": "Outline solidity",
    "convexity_depth": "Outline convexity depth",
    "ellipse_misfit": "Outline departure from an ellipse (raw outline)",
    "axis_ratio": "Outline long-to-short axis ratio (raw outline)",
    "depth_width_ratio": "Outline depth-to-width ratio (raw outline)",
    "width_mm": "Lesion width (mm)",
    "depth_mm": "Lesion depth (mm)",
    "area_mm2": "Lesion area (mm²)",
}

#: Prefixes of inputs computed from the outline -> the words that replace them.
_INPUT_PREFIXES: tuple[tuple[str, str], ...] = (
    ("morph_sm_", "Smoothed outline: "),
    ("morph_echo_", "Echo: "),
    ("morph_", "Outline: "),
)

_GEOMETRY_WORDS = frozenset({"solidity", "convexity", "aspect_ratio"})


def inputs_text(names: list[str] | tuple[str, ...]) -> str:
    """Plain labels of input columns, each followed by its column name when the words differ.

    ``["age", "echogenicity"]`` -> ``"Age (years), Echo pattern (echogenicity)"``: the app's
    user reads the label, a ``--clinical`` CSV needs the column.
    """
    out = []
    for n in names:
        label = input_label(n)
        out.append(label if n.replace("_", " ") in label.lower() else f"{label} ({n})")
    return ", ".join(out)


def input_label(name: str) -> str:
    """Plain label of a model input column (``posterior_features`` -> ``Posterior features``).

    Known clinical and lexicon columns have a fixed label; the outline measures
    buscad computes have plain words (:data:`OUTLINE_MEASURES`: ``morph_echo_dark_frac``
    -> ``Share of very dark lesion pixels``), other ``morph_*`` columns read
    ``Smoothed outline: ...``, ``Echo: ...`` or ``Outline: ...``; any other column has
    its underscores turned into spaces and its first letter capitalised.
    """
    if name in INPUTS:
        return INPUTS[name]
    if name.startswith("morph_") and name.removeprefix("morph_") in OUTLINE_MEASURES:
        return OUTLINE_MEASURES[name.removeprefix("morph_")]
    for prefix, words in _INPUT_PREFIXES:
        if name.startswith(prefix):
            return words + name.removeprefix(prefix).replace("_", " ")
    if name in _GEOMETRY_WORDS:
        return "Outline " + name.replace("_", " ")
    text = name.replace("_", " ").strip()
    return text[:1].upper() + text[1:]
