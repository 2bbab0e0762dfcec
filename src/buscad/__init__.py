"""buscad: Breast UltraSound Computer-Aided Diagnosis.

Honest, reproducible benign/malignant breast-ultrasound studies from one config:
manifest data layer, leakage audit, grouped splits, deep and radiomics models,
statistics, reports, and a clinician-facing web app.

Importing :mod:`buscad` is cheap: heavy libraries (torch, torchvision, timm,
pytorch-grad-cam, pyradiomics) are imported only by the modules that use them,
always after :mod:`buscad._compat`.
"""

__version__ = "0.1.0"
