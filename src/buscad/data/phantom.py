"""Synthetic B-mode breast ultrasound phantoms with masks and clinical columns.

The phantoms feed the demo and the test suite so that nothing needs the network
or real patient data. They are not meant to be realistic enough to train a
clinical model; they are meant to carry the *signs* the BI-RADS lexicon names,
so that every stage of buscad has something real to learn and measure:

benign-like lesions
    oval, circumscribed margin, parallel orientation (wider than tall),
    homogeneous hypo- or anechoic interior, posterior enhancement or none;
malignant-like lesions
    irregular, angular/microlobulated or spiculated margin, often not parallel
    (taller than wide), heterogeneous interior, echogenic halo, posterior
    acoustic shadowing, sometimes microcalcifications.

A fraction ``atypical`` of lesions borrows the other class's look, so no model
can be perfect. Age and the simulated radiologist's BI-RADS differ by class.

Image formation: a layered tissue echogenicity map (skin, subcutaneous fat,
fibroglandular tissue, chest wall) times the lesion's echo pattern and its
posterior effect, times fully developed speckle (the magnitude of a complex
Gaussian field, i.e. Rayleigh amplitude, smoothed anisotropically to mimic the
point-spread function), with depth attenuation and log compression to 8 bits.

Optional planted problems for the audit and split tests: re-cropped/resized
near-duplicates (some with the opposite label), burned-in calipers and text,
colour (Doppler-like) boxes, and several images per patient.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from scipy import ndimage

from buscad.data.manifest import LEXICON_COLUMNS, Manifest
from buscad.utils import atomic_path

BIRADS_ORDER = ("2", "3", "4a", "4b", "4c", "5")
#: The columns of the manifest :func:`generate_cohort` writes (what a study config can name
#: before any phantom exists; a test checks them against a generated cohort).
MANIFEST_COLUMNS: tuple[str, ...] = (
    "image_id",
    "image_path",
    "mask_path",
    "label",
    "patient_id",
    "cohort",
    "age",
    "birads",
    *LEXICON_COLUMNS,
    "device",
    "phantom_source",
    "has_annotations",
    "has_colour_box",
)


@dataclass
class PhantomSpec:
    """Settings of a phantom cohort.

    Parameters
    ----------
    size : tuple of int
        ``(height, width)`` of each image.
    malignant_fraction : float
        Share of malignant lesions among lesion images.
    normal_fraction : float
        Share of images without a lesion (label ``normal``, empty mask).
    atypical : float
        Share of lesions drawn with the other class's morphology.
    second_view_fraction : float
        Share of patients with a second image (another view of the same lesion).
    duplicate_fraction : float
        Share of images that get a re-cropped and resized near-duplicate copy,
        stored under a new ``image_id`` and a new ``patient_id`` (as in BUSI).
    conflict_fraction : float
        Share of those duplicates that carry the opposite label.
    annotation_fraction : float
        Share of images with burned-in calipers and text.
    colour_fraction : float
        Share of images with a colour (Doppler-like) box; saved as RGB.
    cohorts : tuple of str
        Cohort names; images are spread evenly. Each cohort gets its own gain,
        speckle grain and dynamic range, as different scanners would.
    seed : int
        Seed of the whole cohort: the same spec always gives the same files.
    """

    size: tuple[int, int] = (224, 256)
    malignant_fraction: float = 0.4
    normal_fraction: float = 0.0
    atypical: float = 0.12
    second_view_fraction: float = 0.2
    duplicate_fraction: float = 0.0
    conflict_fraction: float = 0.0
    annotation_fraction: float = 0.0
    colour_fraction: float = 0.0
    cohorts: tuple[str, ...] = ("site_a",)
    seed: int = 0
    extra: dict = field(default_factory=dict)


@dataclass
class Lesion:
    """Geometry and appearance of one phantom lesion (all lengths in pixels)."""

    cy: float
    cx: float
    a: float  # horizontal semi-axis
    b: float  # vertical semi-axis
    angle: float
    harmonics: list[tuple[int, float, float]]
    spikes: list[tuple[float, float, float]]  # (angle, length factor, width rad)
    level: float  # interior echogenicity relative to background
    heterogeneity: float
    edge_blur: float
    halo: float
    posterior: float  # >1 enhancement, <1 shadowing
    calcifications: int
    malignant_look: bool


def _cohort_params(name: str, index: int) -> dict:
    rng = np.random.default_rng(1000 + index)
    return {
        "gain": float(rng.uniform(0.85, 1.15)),
        "grain": float(rng.uniform(0.7, 1.3)),
        "dynamic_range": float(rng.uniform(45.0, 60.0)),
        "attenuation": float(rng.uniform(0.6, 1.2)),
    }


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    z = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return z / (z.std() + 1e-9)


def _tissue_map(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Layered background echogenicity (linear amplitude, ~0..1.2)."""
    y = np.linspace(0, 1, h)[:, None]
    wav = 0.03 * _smooth_noise(rng, (1, w), 20)[0][None, :]
    skin = 0.035 + 0.01 * rng.random()
    fat_end = rng.uniform(0.18, 0.3) + wav
    gland_end = rng.uniform(0.72, 0.85) + wav
    t = np.full((h, w), 0.45)
    t = np.where(y < skin, 1.1, t)
    fat = (y >= skin) & (y < fat_end)
    t = np.where(fat, 0.35 + 0.12 * _smooth_noise(rng, (h, w), 6), t)
    gland = (y >= fat_end) & (y < gland_end)
    t = np.where(gland, 0.75 + 0.18 * _smooth_noise(rng, (h, w), 3), t)
    wall = y >= gland_end
    t = np.where(wall, 0.3 + 0.08 * _smooth_noise(rng, (h, w), 5), t)
    pleura = np.abs(y - (gland_end + 0.08)) < 0.012
    t = np.where(pleura, 1.0, t)
    # Cooper's ligaments: thin bright oblique lines in the fat layer
    for _ in range(rng.integers(2, 5)):
        x0 = rng.uniform(0, w)
        slope = rng.uniform(-1.5, 1.5)
        yy, xx = np.mgrid[0:h, 0:w]
        d = np.abs((xx - x0) - slope * (yy - skin * h)) / np.sqrt(1 + slope**2)
        t = np.where(fat & (d < 1.2), 0.9, t)
    return np.clip(t, 0.05, 1.3)


def _draw_lesion(rng: np.random.Generator, malignant_look: bool, h: int, w: int) -> Lesion:
    scale = min(h, w)
    if malignant_look:
        a = rng.uniform(0.09, 0.2) * scale
        b = a * rng.uniform(0.8, 1.45)  # often taller than wide
        harmonics = [
            (int(k), float(rng.uniform(0.05, 0.16)), float(rng.uniform(0, 2 * np.pi)))
            for k in rng.choice(np.arange(3, 14), size=4, replace=False)
        ]
        n_spikes = int(rng.integers(0, 9))
        spikes = [
            (
                float(rng.uniform(0, 2 * np.pi)),
                float(rng.uniform(0.25, 0.7)),
                float(rng.uniform(0.05, 0.13)),
            )
            for _ in range(n_spikes)
        ]
        level = float(rng.uniform(0.12, 0.3))
        heterogeneity = float(rng.uniform(0.25, 0.5))
        edge_blur = float(rng.uniform(1.2, 2.5))
        halo = float(rng.uniform(0.0, 0.6)) if rng.random() < 0.5 else 0.0
        posterior = float(rng.uniform(0.3, 0.6)) if rng.random() < 0.65 else 1.0
        calcs = int(rng.integers(3, 12)) if rng.random() < 0.4 else 0
    else:
        a = rng.uniform(0.09, 0.22) * scale
        b = a * rng.uniform(0.45, 0.85)  # wider than tall
        harmonics = [
            (int(k), float(rng.uniform(0.0, 0.04)), float(rng.uniform(0, 2 * np.pi)))
            for k in (2, 3)
        ]
        spikes = []
        anechoic = rng.random() < 0.3
        level = float(rng.uniform(0.02, 0.08)) if anechoic else float(rng.uniform(0.2, 0.4))
        heterogeneity = float(rng.uniform(0.02, 0.1))
        edge_blur = float(rng.uniform(0.4, 0.9))
        halo = 0.0
        r = rng.random()
        posterior = float(rng.uniform(1.25, 1.6)) if (anechoic or r < 0.45) else 1.0
        calcs = 1 if rng.random() < 0.05 else 0
    cy = rng.uniform(0.38, 0.62) * h
    cx = rng.uniform(0.3, 0.7) * w
    angle = float(rng.uniform(-0.25, 0.25))
    return Lesion(
        cy,
        cx,
        a,
        b,
        angle,
        harmonics,
        spikes,
        level,
        heterogeneity,
        edge_blur,
        halo,
        posterior,
        calcs,
        malignant_look,
    )


def _lesion_field(les: Lesion, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (signed distance-like field, inside mask) for a lesion."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dy, dx = yy - les.cy, xx - les.cx
    ca, sa = np.cos(les.angle), np.sin(les.angle)
    u = ca * dx + sa * dy
    v = -sa * dx + ca * dy
    theta = np.arctan2(v / les.b, u / les.a)
    rho = np.hypot(u / les.a, v / les.b)
    r = np.ones_like(theta)
    for k, amp, ph in les.harmonics:
        r += amp * np.cos(k * theta + ph)
    for ang, length, width in les.spikes:
        d = np.angle(np.exp(1j * (theta - ang)))
        r += length * np.exp(-0.5 * (d / width) ** 2)
    field_ = rho - r  # < 0 inside
    return field_, field_ < 0


def render(
    les: Lesion | None,
    rng: np.random.Generator,
    size: tuple[int, int],
    cohort: dict,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one phantom: returns ``(uint8 image, bool mask)``."""
    h, w = size
    tissue = _tissue_map(rng, h, w)
    mask = np.zeros((h, w), dtype=bool)
    if les is not None:
        f, mask = _lesion_field(les, h, w)
        scale = min(les.a, les.b)
        # smooth transition width in pixels, converted to field units
        t = 1.0 / (1.0 + np.exp(f * scale / les.edge_blur))
        interior = les.level * (1.0 + les.heterogeneity * _smooth_noise(rng, (h, w), 2.5))
        interior = np.clip(interior, 0.01, 1.0)
        if les.halo > 0:
            ring = np.exp(-0.5 * ((f * scale - 2.5) / 2.0) ** 2)
            tissue = tissue * (1 + les.halo * ring)
        img = tissue * (1 - t) + interior * t
        # posterior effect below the lesion, fading with depth
        cols = mask.any(axis=0)
        if cols.any() and les.posterior != 1.0:
            bottom = np.where(mask.any(axis=1))[0].max()
            yy = np.arange(h)[:, None]
            below = (yy > bottom) & cols[None, :]
            fade = np.exp(-(yy - bottom) / (0.6 * h))
            prof = ndimage.gaussian_filter1d(cols.astype(float), 2.0)[None, :]
            gain = 1 + (les.posterior - 1) * fade * prof
            img = np.where(below | ((yy > bottom) & (prof > 0.05)), img * gain, img)
        if les.calcifications:
            ys, xs = np.nonzero(mask)
            idx = rng.choice(len(ys), size=min(les.calcifications, len(ys)), replace=False)
            for yy_, xx_ in zip(ys[idx], xs[idx], strict=True):
                img[max(yy_ - 1, 0) : yy_ + 1, max(xx_ - 1, 0) : xx_ + 1] = 1.4
    else:
        img = tissue
    # speckle: Rayleigh amplitude of a smoothed complex Gaussian field
    g = cohort["grain"]
    re = ndimage.gaussian_filter(rng.standard_normal((h, w)), (0.6 * g, 1.4 * g))
    im = ndimage.gaussian_filter(rng.standard_normal((h, w)), (0.6 * g, 1.4 * g))
    speckle = np.hypot(re, im)
    speckle /= speckle.mean() + 1e-9
    depth = np.linspace(0, 1, h)[:, None]
    atten = np.exp(-cohort["attenuation"] * depth) * (1 + 0.6 * depth)  # partial TGC
    amp = img * speckle * atten * cohort["gain"]
    db = 20 * np.log10(amp + 1e-6)
    dr = cohort["dynamic_range"]
    top = np.percentile(db, 99.5)
    out = np.clip((db - (top - dr)) / dr, 0, 1) ** 1.5  # darker mid-tones, as on a scanner
    return (out * 255).astype(np.uint8), mask


def _suspicion(les: Lesion, rng: np.random.Generator) -> float:
    """Simulated radiologist's suspicion from the visible signs (0..1)."""
    s = 0.0
    s += 0.35 * (les.b / les.a > 1.0)
    s += 0.25 * min(sum(a for _, a, _ in les.harmonics) / 0.4, 1.0)
    s += 0.2 * min(len(les.spikes) / 4, 1.0)
    s += 0.1 * (les.posterior < 1.0)
    s += 0.1 * (les.calcifications > 0)
    s += 0.1 * (les.halo > 0)
    return float(np.clip(s + rng.normal(0, 0.12), 0, 1))


def _birads_from_suspicion(s: float) -> str:
    cuts = [0.12, 0.3, 0.45, 0.6, 0.78]
    cats = ["2", "3", "4a", "4b", "4c", "5"]
    return cats[int(np.searchsorted(cuts, s))]


def _lexicon(les: Lesion, rng: np.random.Generator) -> dict:
    """BI-RADS lexicon descriptors read off the geometry, with 10% reader error each."""

    def noisy(value: str, alternatives: list[str]) -> str:
        if rng.random() < 0.1:
            return str(rng.choice([a for a in alternatives if a != value]))
        return value

    irregular = sum(a for _, a, _ in les.harmonics) > 0.2 or len(les.spikes) > 2
    shape = "irregular" if irregular else ("oval" if les.a / les.b > 1.15 else "round")
    if les.spikes and len(les.spikes) > 2:
        margin = "spiculated"
    elif irregular:
        margin = str(rng.choice(["angular", "microlobulated", "indistinct"]))
    else:
        margin = "circumscribed"
    echo = (
        "anechoic"
        if les.level < 0.1
        else ("heterogeneous" if les.heterogeneity > 0.2 else "hypoechoic")
    )
    post = "shadowing" if les.posterior < 1 else ("enhancement" if les.posterior > 1 else "none")
    return {
        "shape": noisy(shape, ["oval", "round", "irregular"]),
        "margin": noisy(
            margin, ["circumscribed", "angular", "microlobulated", "indistinct", "spiculated"]
        ),
        "echogenicity": noisy(echo, ["anechoic", "hypoechoic", "heterogeneous", "isoechoic"]),
        "posterior_features": noisy(post, ["none", "enhancement", "shadowing", "combined"]),
        "calcifications": "present" if les.calcifications else "absent",
        "orientation": noisy(
            "not parallel" if les.b / les.a > 1.0 else "parallel", ["parallel", "not parallel"]
        ),
    }


def _burn_annotations(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Burn calipers ('+' marks at the lesion's ends) and corner text into the image."""
    pil = Image.fromarray(img)
    d = ImageDraw.Draw(pil)
    h, w = img.shape
    ys, xs = np.nonzero(mask) if mask.any() else (np.array([h // 2]), np.array([w // 2]))
    pts = [(xs.min() - 3, int(ys.mean())), (xs.max() + 3, int(ys.mean()))]
    for x, y in pts:
        d.line([(x - 4, y), (x + 4, y)], fill=255, width=1)
        d.line([(x, y - 4), (x, y + 4)], fill=255, width=1)
    d.text((4, h - 14), f"L{rng.integers(1, 9)} {rng.integers(10, 99)}MM", fill=255)
    return np.asarray(pil)


def _colour_box(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add a Doppler-like colour box (returns an RGB array)."""
    h, w = img.shape
    rgb = np.repeat(img[..., None], 3, axis=-1).astype(np.int16)
    y0, x0 = int(rng.uniform(0.2, 0.5) * h), int(rng.uniform(0.2, 0.5) * w)
    y1, x1 = y0 + h // 4, x0 + w // 4
    rgb[y0:y1, x0, :] = (220, 220, 0)
    rgb[y0:y1, x1, :] = (220, 220, 0)
    rgb[y0, x0:x1, :] = (220, 220, 0)
    rgb[y1, x0:x1, :] = (220, 220, 0)
    blob = _smooth_noise(rng, (y1 - y0, x1 - x0), 3) > 1.0
    red = rgb[y0:y1, x0:x1]
    red[blob] = (200, 30, 30)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _near_duplicate(
    img: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Re-crop (85–95% of each side) and resize (0.8–1.25x) an image and its mask."""
    h, w = img.shape[:2]
    fy, fx = rng.uniform(0.85, 0.95, size=2)
    ch, cw = int(h * fy), int(w * fx)
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    crop = img[y0 : y0 + ch, x0 : x0 + cw]
    mcrop = mask[y0 : y0 + ch, x0 : x0 + cw]
    s = rng.uniform(0.8, 1.25)
    nh, nw = max(16, int(ch * s)), max(16, int(cw * s))
    out = np.asarray(Image.fromarray(crop).resize((nw, nh), Image.BILINEAR))
    mout = (
        np.asarray(Image.fromarray(mcrop.astype(np.uint8) * 255).resize((nw, nh), Image.NEAREST))
        > 0
    )
    return out, mout


def _save_png(arr: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def generate_cohort(
    n: int, out_dir: str | Path, spec: PhantomSpec | None = None, **overrides
) -> Manifest:
    """Generate ``n`` phantom images (plus planted duplicates) with masks and a manifest.

    Parameters
    ----------
    n : int
        Number of primary images (planted near-duplicates come on top).
    out_dir : path-like
        Output folder: ``images/``, ``masks/`` and ``manifest.csv`` are written.
    spec : PhantomSpec, optional
        Settings; keyword ``overrides`` replace individual fields.

    Returns
    -------
    Manifest
        The manifest written to ``out_dir/manifest.csv``. Besides the contract's
        columns it holds ``phantom_source`` (the image a planted duplicate was
        made from, else empty), ``has_annotations`` and ``has_colour_box``: the
        ground truth the audit tests check against.
    """
    spec = spec or PhantomSpec()
    for k, v in overrides.items():
        if not hasattr(spec, k):
            raise TypeError(f"PhantomSpec has no field {k!r}")
        setattr(spec, k, v)
    if n < 1:
        raise ValueError("n must be at least 1")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    cohort_params = {c: _cohort_params(c, i) for i, c in enumerate(spec.cohorts)}
    rows: list[dict] = []
    primaries: list[tuple[str, np.ndarray, np.ndarray, dict]] = []
    i = 0
    patient = 0
    while i < n:
        patient += 1
        cohort = spec.cohorts[(patient - 1) % len(spec.cohorts)]
        cp = cohort_params[cohort]
        r = rng.random()
        if r < spec.normal_fraction:
            label = "normal"
        else:
            label = "malignant" if rng.random() < spec.malignant_fraction else "benign"
        malignant = label == "malignant"
        look = malignant if rng.random() >= spec.atypical else not malignant
        les = _draw_lesion(rng, look, *spec.size) if label != "normal" else None
        age = float(np.clip(rng.normal(57, 11) if malignant else rng.normal(45, 12), 20, 90))
        views = 2 if (rng.random() < spec.second_view_fraction and i + 1 < n) else 1
        base_clin: dict = {"age": round(age)}
        if les is not None:
            susp = _suspicion(les, rng)
            base_clin["birads"] = _birads_from_suspicion(susp)
            base_clin.update(_lexicon(les, rng))
        else:
            base_clin["birads"] = "1"
        for v in range(views):
            if les is not None and v > 0:  # another view: same lesion, rotated and rescaled a bit
                les = Lesion(
                    **{
                        **asdict(les),
                        "angle": les.angle + rng.uniform(-0.2, 0.2),
                        "a": les.a * rng.uniform(0.9, 1.1),
                        "b": les.b * rng.uniform(0.9, 1.1),
                    }
                )
            img, mask = render(les, rng, spec.size, cp)
            annotated = rng.random() < spec.annotation_fraction
            coloured = rng.random() < spec.colour_fraction
            if annotated:
                img = _burn_annotations(img, mask, rng)
            if coloured:
                img = _colour_box(img, rng)
            iid = f"ph{spec.seed:03d}_{i:04d}"
            _save_png(img, out / "images" / f"{iid}.png")
            _save_png((mask * 255).astype(np.uint8), out / "masks" / f"{iid}_mask.png")
            row = {
                "image_id": iid,
                "image_path": f"images/{iid}.png",
                "mask_path": f"masks/{iid}_mask.png",
                "label": label,
                "patient_id": f"P{spec.seed:03d}_{patient:04d}",
                "cohort": cohort,
                **base_clin,
                "device": f"phantom-{cohort}",
                "phantom_source": "",
                "has_annotations": annotated,
                "has_colour_box": coloured,
            }
            rows.append(row)
            primaries.append((iid, img, mask, row))
            i += 1
    # planted near-duplicates (new image_id and patient_id, as in BUSI)
    n_dup = round(spec.duplicate_fraction * len(primaries))
    if n_dup:
        picks = rng.choice(len(primaries), size=n_dup, replace=False)
        n_conflict = round(spec.conflict_fraction * n_dup)
        for j, k in enumerate(sorted(picks)):
            iid, img, mask, row = primaries[k]
            dimg, dmask = _near_duplicate(img, mask, rng)
            did = f"{iid}_dup"
            _save_png(dimg, out / "images" / f"{did}.png")
            _save_png((dmask * 255).astype(np.uint8), out / "masks" / f"{did}_mask.png")
            label = row["label"]
            if j < n_conflict and label != "normal":
                label = "benign" if label == "malignant" else "malignant"
            rows.append(
                {
                    **row,
                    "image_id": did,
                    "image_path": f"images/{did}.png",
                    "mask_path": f"masks/{did}_mask.png",
                    "label": label,
                    "patient_id": f"{row['patient_id']}_dup",
                    "phantom_source": iid,
                }
            )
    df = pd.DataFrame(rows)
    man = Manifest(df, root=out, source=out / "manifest.csv")
    man.save(out / "manifest.csv")
    return Manifest.load(out / "manifest.csv")
