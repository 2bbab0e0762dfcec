"""Dataset audit: exact and near duplicates, label conflicts, colour overlays, burned-in annotations, mask problems and shortcut references.

Owns the audit's scan, duplicate search, findings, report and ``buscad data audit``. May import: buscad.data (io, manifest, groups), buscad.utils, buscad.errors.

Data-leakage audit of a manifest: duplicates, conflicts, overlays, masks, shortcuts.

``run_audit(manifest, out_dir)`` (CLI: ``buscad data audit MANIFEST -o DIR``) reads
every image once and writes CSV tables, ``summary.json``, one self-contained
``report.html`` and ``manifest_audited.csv`` (the input plus ``dup_group`` and
the audit flags). What it looks for:

Exact duplicates
    SHA-256 of the file bytes, and SHA-256 of the decoded grayscale pixels (as
    :func:`buscad.data.io.read_image` returns them: dtype, shape and bytes), so a
    PNG re-saved with other compression settings is still caught.

Near-duplicates (re-cropped, resized, or adjacent frames of one acquisition)
    A perceptual hash of the whole image does not survive re-cropping, so the
    search has two stages (:func:`find_near_duplicates`):

    1. *Candidates.* Each image is reduced to a thumbnail whose long side is
       ``candidate_size`` (96) pixels and band-pass filtered (difference of
       Gaussians, sigma 1 and 6 px). Its central square (side
       ``query_fraction`` = 0.5 of the short side) is resampled to an 8x8
       grid of cell means, mean-centred and scaled to unit norm (the *query*).
       Every image also yields *windows*: squares of side ``s x q`` (``q`` the
       median query side, ``s`` in 9 log-spaced scales from 0.55 to 1.8) at a
       stride of 6 px, described the same way (cell means from the integral
       image). For each ordered pair (i, j) the score
       ``S_ij`` is the largest dot product (a Pearson correlation of the two
       8x8 grids) between the query of i and any window of j; one matrix
       product does this for all pairs, and the window that matched gives the
       scale between the images. Pairs are ranked by
       ``Z_ij = (S_ij - mean_i) / sd_i + (S_ij - mean_j) / sd_j`` (row and
       column z-scores; the larger of ``Z_ij`` and ``Z_ji``), so that smooth
       images that correlate with everything do not crowd out true partners;
       each image keeps its ``top_k`` = 12 best partners as candidates.
    2. *Verification.* Thumbnails with long side ``thumb_size`` = 128 px are
       band-pass filtered (difference of Gaussians, sigma 2 and 8 px), which
       keeps tissue structure and removes the depth gradient and the overall
       brightness that all breast scans share. The central
       ``template_fraction`` = 0.6 of one image is resized over 7 scales (0.8
       to 1.25 times the candidate's scale) and located in the other with
       normalised cross-correlation
       ``NCC = sum((T - mean T)(I - mean I)) / sqrt(sum (T - mean T)^2 sum (I - mean I)^2)``
       (OpenCV ``TM_CCOEFF_NORMED``), in both directions. At the alignment found
       each way, a *texture NCC* is computed on a finer band (DoG sigma 1 and
       4 px) divided by its local RMS (Gaussian window sigma 4 px), so that fine
       texture counts as much as the strong edges of a lesion: two unrelated
       images with a similar dark oval in the middle agree on the band but not
       on the texture. A pair is a near-duplicate when all three hold:
       ``min(NCC_ij, NCC_ji) >= ncc_threshold`` (0.72),
       ``min(texture_ij, texture_ji) >= texture_threshold`` (0.35), and the
       two best scales describe one geometric relation,
       ``|log(k_ij * k_ji)| <= log(scale_tolerance)`` (1.15). Pairs with
       texture NCC >= ``same_scan_texture`` (0.7) are labelled ``same scan``
       (identical pixels up to cropping and resampling), the others
       ``similar frame`` (an adjacent frame or re-acquisition of the same view).

    Calibration (by eye, then checked on planted duplicates): on BUSI
    (Al-Dhabyani et al., Data in Brief 28:104863, 2020), among about 5700
    candidate pairs, the pairs judged by eye to be the same scan or an
    adjacent frame scored band NCC >= 0.74 and texture NCC >= 0.37; unrelated
    pairs above the band threshold mostly involve large anechoic cysts, whose
    smooth dark outlines look alike, and fail the scale or texture check. With
    these thresholds BUSI gives 153 groups (349 images); by eye, 40 random
    groups and all 8 label-conflict groups were true, and 15 of the 17
    ``similar frame`` pairs (the 2 false ones join two benign cysts). On the
    phantoms (planted 85-95 % re-crops resized by
    0.8-1.25; images far more alike than real scans) planted pairs score band
    NCC >= 0.95 and texture NCC >= 0.78, unrelated pairs band NCC <= 0.81 and
    texture NCC <= 0.29 (recall of planted pairs 1.0 on three phantom cohorts,
    no group joining unrelated images). Exact duplicates are always joined. Groups are the
    connected components of the accepted pairs (union-find), so a group can
    hold images that are linked only through a third one.

Label conflicts
    Duplicate groups whose members carry different labels.

Colour content
    :class:`~buscad.data.io.ImageMeta` ``has_colour`` and ``colour_fraction``
    (share of pixels with chroma ``max(R,G,B) - min(R,G,B) > 24``). Some
    scanners tint the whole B-mode image (BrEaST: a bluish grey map), which is
    colour but not an overlay, so :func:`colour_overlay_fraction` separates
    the two: each colour channel is compared with its median over all pixels
    of the same luma; a pixel is an *overlay* pixel when a channel deviates by
    more than 24. A tint is a function of luma and leaves no such pixel;
    Doppler boxes, coloured calipers, text and body markers do.
    ``colour_overlay`` = overlay fraction >= 5e-5 (about 15 pixels in a
    560x470 image); ``colour_tint`` = colour without overlay.

Burned-in annotations (calipers, text), see :func:`annotation_marks`
    On the grayscale image, a pixel is a *thin bright stroke* pixel when it is
    at least ``bright`` (180) and exceeds both pixels ``s`` px away on either
    side (``s`` = 2 or 3) by ``contrast`` (50) grey levels, horizontally (part
    of a vertical stroke) or vertically (part of a horizontal stroke). Ultrasound
    speckle and tissue are smooth at this scale; screen graphics are 1-3 px
    lines. A *caliper cross* is a pixel with horizontal-stroke pixels on
    ``arm`` (3) of the 3..arm+1 px to its left and to its right and
    vertical-stroke pixels likewise above and below (a ``+``). A *text word*
    is a cluster of stroke pixels (joined by a 3x5 dilation) that is 9-30 px
    high, 1.8-20 times as wide as high, 12-70 % filled with stroke pixels, with
    at least 30 % vertical and 10 % horizontal strokes, and less than 10 % of
    its pixels within 3 px of the image border (cut-off scanner labels at the
    edge are ignored). An image is flagged when it has a cross or a word.
    Measured: BUSI 188 of 780 flagged, 40 of a random 40 true by eye
    (precision 1.0, 95 % CI lower bound 0.91); 3 of a random 40 unflagged show
    text (one of them cut at the border), so recall is roughly 0.85. Phantoms
    (planted calipers and text): precision 15/16, recall 15/17. BrEaST-Lesions
    (Pawlowska et al., Sci Data 11:148, 2024): none flagged.

Mask problems
    Missing mask for a lesion, unreadable mask, size mismatch with the image,
    empty mask for a lesion, non-empty mask on a ``normal`` image, more than
    one connected component (8-connectivity), lesion touching the image border.

Distributions
    Per cohort and label: counts, image sizes, lesion area.

Annotation shortcuts (benign vs malignant rows only)
    Cross-validated AUC of models that should not know the answer: mask
    geometry (log area, area fraction; of the largest component: solidity =
    area / convex-hull area, convexity = convex-hull perimeter / perimeter,
    aspect ratio = box width / box height, box width and height and box centre
    relative to the image; see :func:`mask_geometry`) and
    image size (height, width, aspect). Each is a logistic regression on
    standardised features (median-imputed), 5-fold stratified CV grouped by
    near-duplicate group union patient (:func:`buscad.data.groups.split_groups`),
    AUC of the pooled out-of-fold probabilities (``roc_auc_score``). Each single
    feature is also scored alone without a model: ``AUC = max(A, 1 - A)`` with
    ``A`` the Mann-Whitney AUC of the raw value (direction chosen on the data,
    so slightly optimistic). Any shortcut with AUC >= ``shortcut_warn_auc``
    (0.8) raises a warning.
"""

from __future__ import annotations

from buscad._lazy import lazy_exports

#: Public name -> defining module, imported on first use (PEP 562).
_LAZY = {
    "AnnotationParams": "buscad.data.audit.annotations",
    "AuditResult": "buscad.data.audit.report",
    "COLOUR_OVERLAY_DEVIATION": "buscad.data.audit.scan",
    "COLOUR_OVERLAY_MIN_FRACTION": "buscad.data.audit.scan",
    "GEOMETRY_FEATURES": "buscad.data.audit.masks",
    "ImageRecord": "buscad.data.audit.scan",
    "MASK_FLAGS": "buscad.data.audit.masks",
    "NearDuplicateParams": "buscad.data.audit.scan",
    "SIZE_FEATURES": "buscad.data.audit.masks",
    "annotation_marks": "buscad.data.audit.annotations",
    "colour_overlay_fraction": "buscad.data.audit.scan",
    "default_cache_dir": "buscad.data.audit.scan",
    "duplicate_groups": "buscad.data.audit.duplicates",
    "exact_duplicate_pairs": "buscad.data.audit.duplicates",
    "find_near_duplicates": "buscad.data.audit.duplicates",
    "group_names": "buscad.data.audit.duplicates",
    "mask_findings": "buscad.data.audit.masks",
    "mask_geometry": "buscad.data.audit.masks",
    "near_duplicate_groups": "buscad.data.audit.duplicates",
    "render_report": "buscad.data.audit.report",
    "run_audit": "buscad.data.audit.run",
    "scan_image": "buscad.data.audit.scan",
    "scan_images": "buscad.data.audit.scan",
    "shortcut_auc": "buscad.data.audit.shortcuts",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
