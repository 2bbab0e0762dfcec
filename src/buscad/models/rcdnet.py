"""RcdNet: residual depthwise-separable convolutions with CBAM attention.

After Liu BQ et al., "RcdNet", Front. Bioeng. Biotechnol. 13:1526260 (2025):
the study combines depthwise-separable convolutions with the Convolutional
Block Attention Module (CBAM; Woo et al., ECCV 2018) to focus on lesion areas.
Only its abstract is available, so this is a compact re-implementation of that
description, sized to train on a CPU (about 0.5 M parameters in the trunk):

``stem``
    ``Conv3x3(3, 32, stride 2) -> BN -> ReLU``.
``stages``
    Four stages of :class:`RcdBlock` with widths ``(48, 96, 192, 320)``,
    ``(1, 2, 2, 1)`` blocks and stride 2 in each stage's first block (total
    stride 32).
``RcdBlock``
    ``x -> DWConv3x3(stride) -> BN -> ReLU -> PWConv1x1 -> BN -> ReLU ->
    DWConv3x3 -> BN -> PWConv1x1 -> BN -> CBAM -> (+ shortcut) -> ReLU``;
    the shortcut is the identity, or ``AvgPool(stride) -> Conv1x1 -> BN`` when
    the shape changes.
``CBAM``
    Channel attention first: ``sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))``
    with a shared two-layer MLP of reduction 8; then spatial attention:
    ``sigmoid(Conv7x7([mean_c(x), max_c(x)]))``; each multiplies the features.
``output``
    Global average pooling to a 320-d feature vector (the head comes from
    :class:`buscad.models.heads.ClassifierHead`).
"""

from __future__ import annotations

import torch
from torch import nn

import buscad._compat  # noqa: F401


class ChannelAttention(nn.Module):
    """``x * sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))`` with a shared MLP."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        mid = max(channels // reduction, 8)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, mid, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reweight channels."""
        a = self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True))
        return x * torch.sigmoid(a)


class SpatialAttention(nn.Module):
    """``x * sigmoid(Conv7x7([mean over channels, max over channels]))``."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reweight positions."""
        s = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.conv(s))


class CBAM(nn.Module):
    """Channel attention followed by spatial attention (Woo et al. 2018)."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply both attentions."""
        return self.spatial(self.channel(x))


def _dws(cin: int, cout: int, stride: int, act_out: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act_out:
        layers.append(nn.ReLU(inplace=True))
    return layers


class RcdBlock(nn.Module):
    """Two depthwise-separable convolutions, CBAM, residual shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(*_dws(cin, cout, stride, True), *_dws(cout, cout, 1, False))
        self.cbam = CBAM(cout)
        if stride != 1 or cin != cout:
            self.shortcut: nn.Module = nn.Sequential(
                nn.AvgPool2d(stride, stride) if stride > 1 else nn.Identity(),
                nn.Conv2d(cin, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block output."""
        return self.act(self.cbam(self.body(x)) + self.shortcut(x))


class RcdNet(nn.Module):
    """The RcdNet trunk: stem, four stages of :class:`RcdBlock`, global average pooling.

    Parameters
    ----------
    widths : tuple of int
        Output channels of the four stages.
    depths : tuple of int
        Blocks per stage.
    stem : int
        Stem channels.

    ``forward`` returns pooled features ``(N, widths[-1])``; ``num_features``
    holds that width. The last block (``stages[-1][-1]``) is the Grad-CAM target.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (48, 96, 192, 320),
        depths: tuple[int, ...] = (1, 2, 2, 1),
        stem: int = 32,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)
        )
        stages, cin = [], stem
        for w, d in zip(widths, depths, strict=True):
            blocks = [RcdBlock(cin, w, 2)] + [RcdBlock(w, w, 1) for _ in range(d - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(N, num_features)``."""
        return self.pool(self.stages(self.stem(x))).flatten(1)


__all__ = ["CBAM", "ChannelAttention", "RcdBlock", "RcdNet", "SpatialAttention"]
