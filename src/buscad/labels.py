"""Plain-language names of buscad's models, shared by reports, the CLI and the web app.

The code, configs and bundle files keep the short names (``dlr``, ``cldlr``, ``us``);
everything a clinician reads shows :func:`model_label` with the short name as a
tooltip or in brackets. No imports beyond the standard library: the web app and
``buscad predict`` use it without pandas.
"""

from __future__ import annotations

#: Short model name -> (plain label, one-line description).
MODELS: dict[str, tuple[str, str]] = {
    "deep": ("Deep-learning AI score", "CNN on the lesion crop; its malignant probability"),
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
    "integrated": ("Integrated AI score", "fusion of the single models' scores"),
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


def model_label(name: str) -> str:
    """Plain label of a model's short name (the name itself when unknown)."""
    return MODELS.get(name, (name, ""))[0]


def model_description(name: str) -> str:
    """One-line description of a model (empty when unknown)."""
    return MODELS.get(name, (name, ""))[1]
