"""DICOM: bounded parsing with pydicom (deflate bound, element budget), modality,
frames, pixel spacing and the burned-in annotation flag. Messages name a header field,
never its value.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from buscad.data.io.budget import DecodeBudget, _budget, _check_file_size, _mib, _refuse_size
from buscad.data.io.colour import COLOUR_FRACTION_MIN, _rgb_to_gray, _to_uint
from buscad.data.io.messages import _kind, _safe_name
from buscad.data.io.meta import ImageMeta
from buscad.data.io.sniff import sniff_format
from buscad.errors import DecodeBudgetError, ImageReadError, UnsupportedModalityError

#: Modalities accepted by default: ultrasound, and "other" (secondary captures of a
#: scanner's screen). Files without a Modality element are accepted too.
ULTRASOUND_MODALITIES: tuple[str, ...] = ("US", "OT")


#: Plain-English names of common DICOM modalities, for error messages.
MODALITY_NAMES: dict[str, str] = {
    "US": "ultrasound",
    "IVUS": "intravascular ultrasound",
    "OT": "other",
    "CT": "computed tomography",
    "MR": "magnetic resonance",
    "NM": "nuclear medicine",
    "PT": "positron emission tomography",
    "CR": "computed radiography",
    "DX": "digital radiography",
    "MG": "mammography",
    "XA": "X-ray angiography",
    "RF": "radio fluoroscopy",
    "IO": "intra-oral radiography",
    "PX": "panoramic X-ray",
    "ES": "endoscopy",
    "XC": "external-camera photography",
    "OP": "ophthalmic photography",
    "SM": "slide microscopy",
    "RTIMAGE": "radiotherapy image",
    "RTDOSE": "radiotherapy dose",
    "RTSTRUCT": "radiotherapy structure set",
    "RTPLAN": "radiotherapy plan",
    "SR": "structured report",
    "SEG": "segmentation",
    "PR": "presentation state",
    "DOC": "document",
}


@contextlib.contextmanager
def quiet_dicom() -> Iterator[None]:
    """Silence pydicom's warnings and log records while reading a file.

    pydicom reports invalid element values in its warnings and in the
    ``pydicom`` logger, quoting the values (``Invalid value for VR DA:
    '<birth date>'``): a malformed date or name would end up in the console or
    a log file. Readers in buscad wrap every
    pydicom call and every header access in this context; problems that matter
    surface as :class:`~buscad.errors.ImageReadError` messages, which never
    quote header values.
    """
    logger = logging.getLogger("pydicom")
    old_level, old_disabled = logger.level, logger.disabled
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(old_level)
        logger.disabled = old_disabled


_DEFLATED = "1.2.840.10008.1.2.1.99"


def _dicom_meta(p: Path) -> tuple[str, int]:
    """Transfer syntax UID of a DICOM file and the offset where its data set starts."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    with open(p, "rb") as fh:
        read_preamble(fh, force=True)
        meta = _read_file_meta_info(fh)
        return str(meta.get("TransferSyntaxUID", "") or "").strip(), fh.tell()


def _check_deflated(p: Path, start: int, b: DecodeBudget) -> None:
    """Inflate a deflated data set in bounded steps; refuse it when it exceeds ``max_bytes``."""
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    with open(p, "rb") as fh:
        fh.seek(start)
        while True:
            chunk = fh.read(1 << 16)
            if not chunk:
                break
            while chunk:
                out = d.decompress(chunk, 1 << 20)
                total += len(out)
                if total > b.max_bytes:
                    raise DecodeBudgetError(
                        p,
                        f"deflated DICOM inflates to more than {_mib(b.max_bytes)}, above the "
                        "decode budget (possible decompression bomb)",
                    )
                chunk = d.unconsumed_tail
            if d.eof:
                break


def _dcmread(
    p: Path, stop_before_pixels: bool = False, budget: DecodeBudget | None = None
) -> object:
    """Parse a DICOM file with pydicom within the budget; every failure is an ImageReadError.

    Elements longer than ``max_element_bytes`` are deferred (never read) and
    refused, except the pixel data, which is not read here when
    ``stop_before_pixels``. A deflated data set is first inflated with a bounded
    budget.
    """
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is a dependency
        raise ImageReadError(p, "pydicom is required to read DICOM files") from exc
    b = _budget(budget)
    _check_file_size(p, b)
    with open(p, "rb") as fh:
        head = fh.read(132)
    has_preamble = len(head) >= 132 and head[128:132] == b"DICM"
    try:
        with quiet_dicom():
            tsyntax, start = _dicom_meta(p)
    except Exception as exc:
        raise ImageReadError(
            p, f"cannot parse the DICOM file meta information ({_kind(exc)})"
        ) from exc
    if tsyntax == _DEFLATED:
        _check_deflated(p, start, b)
    try:
        with quiet_dicom():
            ds = pydicom.dcmread(
                p,
                force=True,
                stop_before_pixels=stop_before_pixels,
                defer_size=b.max_element_bytes,
            )
    except MemoryError as exc:
        raise ImageReadError(p, "not enough memory to parse the DICOM file") from exc
    except Exception as exc:  # pydicom raises assorted errors on truncated or garbage files
        raise ImageReadError(
            p, f"cannot parse DICOM, file truncated or corrupt ({_kind(exc)})"
        ) from exc
    try:
        with quiet_dicom():
            plausible = has_preamble or any(
                k in ds
                for k in ("SOPClassUID", "PixelData", "Rows", "Modality")  # type: ignore[operator]
            )
    except Exception:
        plausible = has_preamble
    if not plausible:
        # force=True parses almost anything; demand real DICOM elements.
        raise ImageReadError(p, "not a DICOM file (no DICM preamble and no DICOM elements)")
    with quiet_dicom():
        for tag in list(ds.keys()):  # type: ignore[attr-defined]
            elem = ds.get_item(tag, keep_deferred=True)  # type: ignore[attr-defined]
            length = int(getattr(elem, "length", 0) or 0)
            if tag == 0x7FE00010 or length == 0xFFFFFFFF:
                continue
            if length > b.max_element_bytes:
                raise DecodeBudgetError(
                    p,
                    f"DICOM element ({tag >> 16:04X},{tag & 0xFFFF:04X}) is {_mib(length)}, "
                    f"above the {_mib(b.max_element_bytes)} element budget",
                )
    return ds


def read_dicom_header(path: str | Path, budget: DecodeBudget | None = None) -> object:
    """Read a DICOM file's header (no pixel data) as a :class:`pydicom.Dataset`.

    Parameters
    ----------
    path : path-like
        A DICOM file.

    Returns
    -------
    pydicom.Dataset
        The header elements. Callers must not copy identifying elements
        (names, ids, dates) anywhere; see :mod:`buscad.data.importers`.

    Raises
    ------
    DecodeBudgetError
        An element above the budget (refused before it is read), or a deflated
        data set that inflates beyond it.
    ImageReadError
        Missing, empty, non-DICOM or unparseable files, and any other failure.
    """
    p = Path(path)
    try:
        fmt = sniff_format(p)
        if fmt != "dicom":
            raise ImageReadError(p, f"not a DICOM file (content looks like {fmt})")
        return _dcmread(p, stop_before_pixels=True, budget=budget)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(_safe_name(p), f"cannot read the DICOM header ({_kind(exc)})") from exc


def dicom_pixel_spacing_mm(ds: object) -> float | None:
    """Pixel size in mm of a DICOM dataset, or None when the header does not say.

    Taken from the first ultrasound region's ``PhysicalDeltaX`` when its units
    are cm (``PhysicalUnitsXDirection == 3``; mm = 10 x cm), else from
    ``PixelSpacing`` or ``ImagerPixelSpacing`` (already mm).
    """
    with quiet_dicom():
        return _dicom_spacing_mm(ds)


def _dicom_spacing_mm(ds: object) -> float | None:
    """Pixel size in mm from an ultrasound region (cm units) or PixelSpacing; None if absent."""
    try:
        regions = ds.get("SequenceOfUltrasoundRegions")  # type: ignore[attr-defined]
        if regions:
            r = regions[0]
            if int(r.get("PhysicalUnitsXDirection", 3)) == 3:  # 3 = cm
                return float(r.PhysicalDeltaX) * 10.0
        for key in ("PixelSpacing", "ImagerPixelSpacing"):
            if key in ds:
                return float(ds[key].value[0])  # type: ignore[index]
    except Exception:
        return None
    return None


def _read_dicom(
    p: Path, b: DecodeBudget, allow_modality: bool | tuple[str, ...], frame: int
) -> tuple[np.ndarray, ImageMeta]:
    """Read one frame of a DICOM image (grayscale, RGB, YBR or palette colour)."""
    with quiet_dicom():
        return _read_dicom_quietly(p, b, allow_modality, frame)


def _check_modality(p: Path, ds: object, allow: bool | tuple[str, ...]) -> str:
    """Refuse non-ultrasound modalities unless allowed; return the modality code ("" if none)."""
    try:
        modality = str(ds.get("Modality", "") or "").strip().upper()  # type: ignore[attr-defined]
    except Exception:
        modality = ""
    if allow is True or not modality or modality in ULTRASOUND_MODALITIES:
        return modality
    if isinstance(allow, tuple) and modality in allow:
        return modality
    # only a code of the table is shown: the header's own text never reaches a message
    name = MODALITY_NAMES.get(modality)
    shown = f"{modality} ({name})" if name else "(not a known modality code)"
    raise UnsupportedModalityError(
        p,
        f"modality {shown} is not ultrasound; "
        "use --any-modality (allow_modality=True) to read it anyway",
    )


def _read_dicom_quietly(
    p: Path, b: DecodeBudget, allow_modality: bool | tuple[str, ...], frame: int
) -> tuple[np.ndarray, ImageMeta]:
    ds = _dcmread(p, stop_before_pixels=True, budget=b)
    modality = _check_modality(p, ds, allow_modality)
    if "PixelData" not in ds and "Rows" not in ds:  # type: ignore[operator]
        raise ImageReadError(
            p, "DICOM file has no pixel data (PixelData element missing or file truncated)"
        )
    frames = _header_int(p, ds, "NumberOfFrames", 1)
    rows = _header_int(p, ds, "Rows")
    cols = _header_int(p, ds, "Columns")
    spp = _header_int(p, ds, "SamplesPerPixel", 1)
    bits = _header_int(p, ds, "BitsAllocated", 8)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()  # type: ignore[attr-defined]
    samples = 3 if photometric == "PALETTE COLOR" else max(spp, 1)  # palettes become RGB
    _refuse_size(p, cols, rows, samples, max(bits, 8), b)
    if frames < 1 or frames > b.max_frames:
        raise DecodeBudgetError(
            p, f"DICOM declares {frames} frames, outside 1..{b.max_frames} (frame budget)"
        )
    if not 0 <= frame < frames:
        raise ImageReadError(p, f"frame {frame} asked for, but the DICOM has {frames} frame(s)")
    burned = _burned_in_flag(ds)
    try:
        tsyntax = ds.file_meta.get("TransferSyntaxUID", None)  # type: ignore[attr-defined]
    except Exception:
        tsyntax = None
    try:
        arr = _dicom_frame(p, ds, frame, frames, b)
    except ImageReadError:
        raise
    except MemoryError as exc:
        raise ImageReadError(p, "not enough memory to decode the DICOM pixel data") from exc
    except Exception as exc:
        odd = (
            ""
            if photometric in _PHOTOMETRIC
            else "; PhotometricInterpretation is not a standard value"
        )
        raise ImageReadError(
            p,
            f"cannot decode DICOM pixel data ({_transfer_syntax_name(tsyntax)}): truncated, "
            f"corrupt or an unsupported compression ({_kind(exc)}{odd})",
        ) from exc
    frac = 0.0
    if photometric == "PALETTE COLOR":
        try:
            from pydicom.pixels import apply_color_lut

            arr = apply_color_lut(arr, ds)
        except Exception as exc:
            raise ImageReadError(
                p, f"cannot apply the DICOM palette colour table ({_kind(exc)})"
            ) from exc
        if arr.dtype == np.uint16:  # palette colours are 8-bit on screen; keep 8 bits
            arr = np.rint(arr / 257.0).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3]
        if rgb.dtype not in (np.uint8, np.uint16):
            rgb, _ = _to_uint(rgb)
        gray, frac = _rgb_to_gray(rgb)
        bit = 16 if gray.dtype == np.uint16 else 8
    elif arr.ndim == 2:
        if photometric == "MONOCHROME1":  # 0 is white: invert within the stored bit range
            arr = _invert_monochrome1(arr, ds)
        gray, bit = _to_uint(arr)
    else:
        shown = (
            photometric if photometric in _PHOTOMETRIC else "an unknown PhotometricInterpretation"
        )
        raise ImageReadError(p, f"unsupported DICOM pixel array shape {arr.shape} ({shown})")
    extra: dict = {"n_frames": frames, "frame": frame}
    if modality:
        extra["modality"] = modality
    meta = ImageMeta(
        path=str(p),
        format="dicom",
        height=int(gray.shape[0]),
        width=int(gray.shape[1]),
        bit_depth=bit,
        has_colour=frac > COLOUR_FRACTION_MIN,
        colour_fraction=float(frac),
        pixel_spacing_mm=_dicom_spacing_mm(ds),
        photometric=photometric,
        extra=extra,
        burned_in_annotation=burned,
    )
    return np.ascontiguousarray(gray), meta


#: PhotometricInterpretation values of the DICOM standard (PS3.3 C.7.6.3.1.2): the only ones
#: a message may name.
_PHOTOMETRIC = frozenset(
    {
        "MONOCHROME1",
        "MONOCHROME2",
        "PALETTE COLOR",
        "RGB",
        "YBR_FULL",
        "YBR_FULL_422",
        "YBR_PARTIAL_420",
        "YBR_ICT",
        "YBR_RCT",
    }
)


def _header_int(p: Path, ds: object, name: str, default: int | None = None) -> int:
    """Integer value of header field ``name``; a missing or non-integer value is an ImageReadError.

    The message names the field, never its value (see :func:`_kind`).
    """
    try:
        value = ds.get(name, None)  # type: ignore[attr-defined]
    except Exception as exc:
        raise ImageReadError(p, f"DICOM header field {name} cannot be read ({_kind(exc)})") from exc
    if value is None or value == "":
        if default is None:
            raise ImageReadError(p, f"DICOM header lacks {name} (no valid image size)")
        return default
    try:
        return int(value)
    except Exception as exc:
        raise ImageReadError(p, f"DICOM header field {name} is not an integer") from exc


def _transfer_syntax_name(tsyntax: object) -> str:
    """pydicom's name of a transfer syntax it knows; never the header's own text."""
    try:
        from pydicom.uid import UID_dictionary  # type: ignore[attr-defined]

        uid = str(tsyntax or "")
        if uid in UID_dictionary:
            return str(UID_dictionary[uid][0])
    except Exception:
        pass
    return "an unknown transfer syntax" if tsyntax else "no transfer syntax"


def _burned_in_flag(ds: object) -> bool | None:
    """``BurnedInAnnotation`` (0028,0301): True for YES, False for NO, None when absent."""
    try:
        v = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()  # type: ignore[attr-defined]
    except Exception:
        return None
    return True if v == "YES" else False if v == "NO" else None


def _dicom_frame(p: Path, ds: object, frame: int, frames: int, b: DecodeBudget) -> np.ndarray:
    """Decode only frame ``frame`` with pydicom's pixel-data plugins.

    Reading from the path lets pydicom seek to that frame (native data) or
    fragment (compressed data) instead of loading every frame. Deflated data
    sets (already bounded by :func:`_check_deflated`) and files pydicom cannot
    read by path are decoded from the full data set.
    """
    from pydicom.pixels import pixel_array

    tsyntax = None
    try:
        tsyntax = ds.file_meta.get("TransferSyntaxUID", None)  # type: ignore[attr-defined]
    except Exception:
        tsyntax = None
    if tsyntax and str(tsyntax) != _DEFLATED:
        try:
            with open(p, "rb") as fh:
                return pixel_array(fh, index=frame)
        except MemoryError:
            raise
        except Exception:  # e.g. no PixelData there, an odd offset table: read the file whole
            pass
    full = _dcmread(p, stop_before_pixels=False, budget=b)
    if "PixelData" not in full:  # type: ignore[operator]
        raise ImageReadError(
            p, "DICOM file has no pixel data (PixelData element missing or file truncated)"
        )
    try:
        if not full.file_meta.get("TransferSyntaxUID"):  # type: ignore[attr-defined]
            from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

            full.file_meta.TransferSyntaxUID = (  # type: ignore[attr-defined]
                ImplicitVRLittleEndian if full.is_implicit_VR else ExplicitVRLittleEndian  # type: ignore[attr-defined]
            )
    except AttributeError:
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ImplicitVRLittleEndian

        full.file_meta = FileMetaDataset()  # type: ignore[attr-defined]
        full.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian  # type: ignore[attr-defined]
    pix = full.get_item(0x7FE00010, keep_deferred=True)  # type: ignore[attr-defined]
    length = int(getattr(pix, "length", 0) or 0)
    if length != 0xFFFFFFFF and length > b.max_bytes + 2**20:
        raise DecodeBudgetError(
            p,
            f"DICOM pixel data is {_mib(length)}, above the {_mib(b.max_bytes)} decode budget "
            "for a file read whole",
        )
    return pixel_array(full, index=frame)


def _invert_monochrome1(arr: np.ndarray, ds: object) -> np.ndarray:
    """Invert MONOCHROME1 pixels: ``v' = (2**BitsStored - 1) - v`` (unsigned), ``-1 - v`` (signed)."""
    try:
        bits = int(getattr(ds, "BitsStored", 0) or arr.dtype.itemsize * 8)
    except Exception:  # not an integer: the sample width is the stored range
        bits = arr.dtype.itemsize * 8
    if np.issubdtype(arr.dtype, np.signedinteger):
        return (-1 - arr.astype(np.int64)).astype(arr.dtype)
    top = (1 << bits) - 1
    out = top - np.clip(arr.astype(np.int64), 0, top)
    return out.astype(arr.dtype)
