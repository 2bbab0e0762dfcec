"""Image preprocessing for the deep models: ROI crop, resize, normalise, augment.

The :class:`Preprocessor` is a small JSON-serialisable dataclass; every model
checkpoint stores the one it was trained with, so inference applies exactly the
same steps. Steps, in order:

1. read the image (grayscale, :func:`buscad.data.io.read_image`) and, in ``roi``
   mode, its mask (:func:`buscad.data.io.read_mask`);
2. ``roi`` mode: crop the mask's bounding box grown by ``margin`` (a fraction of
   the box's height and width on each side, clipped to the image), as Yang et al.
   (Sci Rep 2024) crop a rectangular ROI; ``whole`` mode: keep the whole image;
3. resize to ``input_size`` x ``input_size`` (bilinear, antialiased), scale to
   [0, 1];
4. (training only) :class:`UltrasoundAugment` (``TrainConfig.us_augment``): the
   ultrasound transforms of the ``usaugment`` package (depth attenuation, acoustic
   shadow, haze, speckle reduction) and albumentations' gain, speckle noise and
   resolution loss; then :class:`Augment`: seeded flips, small affine, brightness,
   contrast, gamma and multiplicative speckle noise;
5. repeat the gray channel 3 times and normalise ``(x - mean) / std``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from buscad.data.io import read_image, read_mask, to_uint8
from buscad.errors import ConfigError, MaskError

if TYPE_CHECKING:  # PyTorch is imported where tensors are made, so NumPy-only inference starts fast
    import torch

ROI_MODES: tuple[str, ...] = ("roi", "whole")


@dataclass
class Preprocessor:
    """How an image becomes a model input tensor.

    Parameters
    ----------
    roi : {"roi", "whole"}
        ``roi``: crop the lesion mask's bounding box plus ``margin``; ``whole``:
        the whole image.
    margin : float
        Fraction of the box's height/width added on every side in ``roi`` mode.
    input_size : int
        Side of the square model input in pixels.
    mean, std : tuple of float
        Per-channel normalisation of the [0, 1] input.
    """

    roi: str = "roi"
    margin: float = 0.1
    input_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.roi not in ROI_MODES:
            raise ConfigError("preprocessing", f"roi must be one of {ROI_MODES}, got {self.roi!r}")
        if not 0 <= self.margin <= 2:
            raise ConfigError("preprocessing", f"margin must be in [0, 2], got {self.margin}")
        if self.input_size < 16:
            raise ConfigError("preprocessing", f"input_size must be >= 16, got {self.input_size}")
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]

    def to_dict(self) -> dict:
        """JSON-ready dict of the fields."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessor:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        known = {"roi", "margin", "input_size", "mean", "std"}
        extra = set(d) - known
        if extra:
            raise ConfigError("preprocessing", f"unknown preprocessing keys: {sorted(extra)}")
        return cls(**{k: (tuple(v) if k in ("mean", "std") else v) for k, v in d.items()})

    # ----------------------------------------------------------------- steps
    def crop(self, gray: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """The ROI (or whole image) as uint8, before resizing."""
        g = to_uint8(gray) if gray.dtype != np.uint8 else gray
        if self.roi == "whole":
            return g
        if mask is None or not mask.any():
            raise MaskError("<mask>", "ROI mode needs a non-empty lesion mask")
        y0, y1, x0, x1 = roi_box(mask, self.margin)
        return g[y0:y1, x0:x1]

    def load(self, image: str | Path, masks: Sequence[str | Path] = ()) -> np.ndarray:
        """Read, crop and resize one image; returns ``uint8 (S, S)``."""
        gray, _ = read_image(image)
        mask = None
        if self.roi == "roi":
            if not masks:
                raise MaskError(image, "ROI mode needs a lesion mask and the row has none")
            mask = read_mask(list(masks), gray.shape)
            if not mask.any():
                raise MaskError(masks[0], "lesion mask is empty; ROI mode needs a lesion")
        return resize(self.crop(gray, mask), self.input_size)

    def to_tensor(self, arrays: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 ``(N, S, S)`` (or list) -> float ``(N, 1, S, S)`` in [0, 1]."""
        import torch

        a = np.stack(list(arrays)) if not isinstance(arrays, np.ndarray) else arrays
        if a.ndim == 2:
            a = a[None]
        return torch.from_numpy(np.array(a, copy=True)).float().div_(255.0).unsqueeze(1)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Gray ``(N, 1, S, S)`` in [0, 1] -> normalised ``(N, 3, S, S)``."""
        import torch

        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x.expand(-1, 3, -1, -1) - mean) / std

    def __call__(self, arrays: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 crops -> normalised model input."""
        return self.normalise(self.to_tensor(arrays))

    def to_array(self, arrays: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """NumPy twin of :meth:`__call__`: uint8 crops -> float32 ``(N, 3, S, S)``."""
        a = np.stack(list(arrays)) if not isinstance(arrays, np.ndarray) else arrays
        if a.ndim == 2:
            a = a[None]
        x = a.astype(np.float32)[:, None] / np.float32(255.0)
        mean = np.asarray(self.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, 3, 1, 1)
        return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def roi_box(mask: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """Bounding box ``(y0, y1, x0, x1)`` (end-exclusive) of a mask, grown by ``margin``.

    The box grows by ``round(margin * h)`` rows and ``round(margin * w)`` columns on
    each side, where ``h, w`` are the box's height and width, then is clipped to the
    image.
    """
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise MaskError("<mask>", "empty mask has no bounding box")
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    dy, dx = round(margin * (y1 - y0)), round(margin * (x1 - x0))
    hh, ww = mask.shape
    return max(0, y0 - dy), min(hh, y1 + dy), max(0, x0 - dx), min(ww, x1 + dx)


def resize(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 image to ``size x size`` (bilinear with antialiasing, PIL)."""
    return np.asarray(Image.fromarray(gray).resize((size, size), Image.BILINEAR))


@dataclass
class Augment:
    """Seeded ultrasound augmentations on a batch of gray images in [0, 1].

    Each image independently gets: a horizontal flip (p = ``hflip``); an affine
    map with rotation ``U(-rotate, rotate)`` degrees, isotropic scale
    ``U(scale)`` and translation ``U(-translate, translate)`` of the side
    (reflection padding); brightness ``x + U(-brightness, brightness)``;
    contrast ``(x - mean) * U(1 - contrast, 1 + contrast) + mean``; gamma
    ``x ** exp(U(-log gamma, log gamma))``; multiplicative speckle
    ``x * (1 + speckle * N(0, 1))`` with ``N`` smoothed over 3x3 pixels. The
    result is clipped to [0, 1]. The random draws come from the ``generator``
    passed in, so a seed fixes every augmentation.
    """

    hflip: float = 0.5
    vflip: float = 0.0
    rotate: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    brightness: float = 0.1
    contrast: float = 0.15
    gamma: float = 1.25
    speckle: float = 0.08

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment ``x`` of shape ``(N, 1, H, W)`` in [0, 1]."""
        import torch
        import torch.nn.functional as F

        n = x.shape[0]
        g = generator

        def u(lo: float, hi: float) -> torch.Tensor:
            return torch.rand(n, generator=g) * (hi - lo) + lo

        ang = u(-self.rotate, self.rotate) * math.pi / 180
        sc = u(*self.scale)
        tx, ty = u(-self.translate, self.translate) * 2, u(-self.translate, self.translate) * 2
        fx = torch.where(torch.rand(n, generator=g) < self.hflip, -1.0, 1.0)
        fy = torch.where(torch.rand(n, generator=g) < self.vflip, -1.0, 1.0)
        cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
        theta = torch.stack(
            [
                torch.stack([cos * fx, -sin, tx], 1),
                torch.stack([sin * fx * fy, cos * fy, ty], 1),
            ],
            1,
        ).to(x)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        b = u(-self.brightness, self.brightness).view(n, 1, 1, 1).to(x)
        c = u(1 - self.contrast, 1 + self.contrast).view(n, 1, 1, 1).to(x)
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - m) * c + m + b).clamp(0, 1)
        lg = math.log(self.gamma)
        gam = torch.exp(u(-lg, lg)).view(n, 1, 1, 1).to(x)
        x = x.clamp_min(1e-6) ** gam
        if self.speckle > 0:
            noise = torch.randn(x.shape, generator=g).to(x)
            noise = F.avg_pool2d(noise, 3, stride=1, padding=1) * 3.0  # keep unit-ish variance
            x = x * (1 + self.speckle * noise)
        return x.clamp(0, 1)


@dataclass
class UltrasoundAugment:
    """Ultrasound acquisition augmentations from the ``usaugment`` package, seeded.

    Each image of a batch independently gets, each with probability ``p``:
    ``usaugment``'s depth attenuation (an exponential loss of intensity with the
    distance from the probe at the top centre, Ostvik et al. 2021), Gaussian
    acoustic shadow and speckle reduction (a random bilateral filter; Smistad et al.
    2018) and haze artifact (Ostvik et al. 2021), then albumentations' gain
    (``RandomBrightnessContrast``), multiplicative speckle noise
    (``MultiplicativeNoise``) and resolution loss (``Downscale``: down- then
    up-sampling by a factor in ``downscale``). The whole crop is the scan (the
    ``scan_mask`` ``usaugment`` asks for is all ones). The random draws come from a
    seed drawn from the ``generator`` passed in (albumentations' own generators and,
    for ``usaugment``, NumPy's global state, restored afterwards), so a seed fixes
    every augmentation. An image the transforms turn non-finite (``usaugment``'s
    bilateral filter, about 1 in 300) is kept unaugmented.

    Parameters
    ----------
    p : float
        Probability of each transform.
    downscale : tuple of float
        Range of the resolution-loss factor.
    speckle_reduction : bool
        Include ``usaugment``'s bilateral filter (the slowest transform).
    """

    p: float = 0.3
    downscale: tuple[float, float] = (0.5, 0.9)
    speckle_reduction: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.p <= 1:
            raise ConfigError("us_augment", f"p must be in [0, 1], got {self.p}")
        self._compose = None

    def compose(self):
        """The albumentations pipeline (built on first use)."""
        if self._compose is None:
            import albumentations as A
            from usaugment.albumentations import (
                DepthAttenuation,
                GaussianShadow,
                HazeArtifact,
                SpeckleReduction,
            )

            p = self.p
            steps = [DepthAttenuation(p=p), GaussianShadow(p=p), HazeArtifact(p=p)]
            if self.speckle_reduction:
                steps.append(SpeckleReduction(p=p))
            steps += [
                A.RandomBrightnessContrast(0.15, 0.15, p=p),
                A.MultiplicativeNoise((0.85, 1.15), per_channel=False, elementwise=True, p=p),
                A.Downscale(scale_range=self.downscale, p=p),
            ]
            self._compose = A.Compose(steps, additional_targets={"scan_mask": "mask"}, seed=0)
        return self._compose

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment ``x`` of shape ``(N, 1, H, W)`` in [0, 1]; same shape and dtype."""
        import random
        import warnings

        import torch

        comp = self.compose()
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        comp.set_random_seed(seed)
        np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
        np.random.seed(seed)  # noqa: NPY002  (usaugment draws from NumPy's global state)
        random.seed(seed)
        try:
            a = x.detach().cpu().numpy().astype(np.float32)
            scan = np.ones(a.shape[2:], np.uint8)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out = np.stack(
                    [comp(image=img[0], scan_mask=scan)["image"].astype(np.float32) for img in a]
                )
        finally:
            np.random.set_state(np_state)  # noqa: NPY002
            random.setstate(py_state)
        # usaugment's bilateral filter (scikit-image) returns NaN on about 1 image in 300:
        # such an image stays as it came in
        bad = ~np.isfinite(out).all(axis=(1, 2))
        out[bad] = a[bad, 0]
        return torch.from_numpy(np.clip(out, 0, 1)[:, None]).to(x)


__all__ = ["ROI_MODES", "Augment", "Preprocessor", "UltrasoundAugment", "resize", "roi_box"]
