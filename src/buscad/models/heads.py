"""The studies' classification head and the backbone + head model.

Mao et al. (Chin J Clin Res 2026) put "512 fully connected layers, 2 output
neurons and a softmax" on top of every backbone: here
``features -> Linear(d, 512) -> ReLU -> Dropout(p) -> Linear(512, 2)``, and
the AI score is the softmax probability of class 1 (malignant).
"""

from __future__ import annotations

import torch
from torch import nn

import buscad._compat  # noqa: F401  (before torchvision/timm)

#: Class order of every buscad classifier: index 1 is the AI score.
CLASS_ORDER: tuple[str, str] = ("benign", "malignant")


class ClassifierHead(nn.Module):
    """``Linear(in_features, hidden) -> ReLU -> Dropout(dropout) -> Linear(hidden, num_classes)``."""

    def __init__(
        self, in_features: int, hidden: int = 512, dropout: float = 0.5, num_classes: int = 2
    ) -> None:
        super().__init__()
        self.in_features, self.hidden, self.dropout_p = in_features, hidden, dropout
        self.num_classes = num_classes
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` from pooled features ``(N, in_features)``."""
        return self.fc2(self.dropout(self.act(self.fc1(f))))

    def config(self) -> dict:
        """JSON description of the head."""
        return {
            "type": "fc-relu-dropout-fc",
            "in_features": self.in_features,
            "hidden": self.hidden,
            "dropout": self.dropout_p,
            "num_classes": self.num_classes,
        }


class BuscadClassifier(nn.Module):
    """A backbone producing pooled features followed by :class:`ClassifierHead`.

    Parameters
    ----------
    backbone : nn.Module
        Maps ``(N, 3, S, S)`` to pooled features ``(N, feature_dim)``.
    feature_dim : int
        Width of the pooled features.
    name : str
        Registry name of the backbone.

    Notes
    -----
    "Deep features" (:meth:`features`) are the backbone's globally pooled
    features *before* the head, as the deep-learning-radiomics (DLR) models of
    Yang et al. (Sci Rep 2024) use them. :meth:`forward` returns logits;
    :meth:`predict_proba` the softmax, whose column 1 is the AI score.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        name: str = "",
        hidden: int = 512,
        dropout: float = 0.5,
        num_classes: int = 2,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.name = name
        self.head = ClassifierHead(feature_dim, hidden, dropout, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``(N, feature_dim)``."""
        f = self.backbone(x)
        return f.flatten(1) if f.ndim > 2 else f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)``."""
        return self.head(self.features(x))

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities; each row sums to 1."""
        return torch.softmax(self(x), dim=1)


class ProbabilityWrapper(nn.Module):
    """``model`` followed by softmax: the graph exported to ONNX."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``(N, num_classes)``."""
        return torch.softmax(self.model(x), dim=1)


__all__ = ["CLASS_ORDER", "BuscadClassifier", "ClassifierHead", "ProbabilityWrapper"]
