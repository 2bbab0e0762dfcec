"""buscad: Breast UltraSound Computer-Aided Diagnosis.

Honest, reproducible benign/malignant breast-ultrasound studies from one config:
manifest data layer, leakage audit, grouped splits, deep and radiomics models,
statistics, reports, and a clinician-facing web app.

Importing :mod:`buscad` is cheap: heavy libraries (torch, torchvision, timm,
pytorch-grad-cam, pyradiomics) are imported only by the modules that use them,
always after :mod:`buscad._compat`.
"""

import os as _os

# OpenMP threads that spin-wait (the default "ACTIVE" policy) make PyTorch on a
# busy laptop CPU several times slower: measured here, one fine-tuning epoch took
# 90 s with spinning threads and 12.7 s with passive ones while other processes
# shared the 2 cores. Set before torch is first imported; a user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
