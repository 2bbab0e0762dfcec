"""One-line error messages of the readers: file names made printable, library
exceptions shortened, and every mask failure turned into a :class:`~buscad.errors.MaskError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from buscad.errors import DecodeBudgetError, ImageReadError, MaskDecodeBudgetError, MaskError


def _safe_name(p: str | Path) -> str:
    """The path for an error message: NUL bytes shown as ``\\0``, at most 300 characters."""
    text = str(p).replace("\x00", "\\0")
    return text if len(text) <= 300 else text[:150] + "..." + text[-147:]


def _short(exc: BaseException, limit: int = 200) -> str:
    """One-line, bounded description of a library exception for an error message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(exc: BaseException) -> str:
    """The exception's class name only: for errors raised while a DICOM header is parsed.

    pydicom's messages quote element values (``invalid literal for int():
    '<text>'``); whatever a scanner wrote in a header must never reach an error
    message, so DICOM errors name the field and the problem, never the value.
    """
    return type(exc).__name__


@contextlib.contextmanager
def _mask_errors(p: Path, what: str) -> Iterator[None]:
    """Turn every failure inside the block into a :class:`MaskError` about ``what`` in ``p``."""
    try:
        yield
    except MaskError:
        raise
    except DecodeBudgetError as exc:
        raise MaskDecodeBudgetError(exc.path, exc.problem) from exc
    except ImageReadError as exc:
        raise MaskError(exc.path, exc.problem) from exc
    except MemoryError as exc:
        raise MaskError(_safe_name(p), f"not enough memory to read the {what}") from exc
    except Exception as exc:
        raise MaskError(
            _safe_name(p), f"cannot read the {what} ({type(exc).__name__}: {_short(exc)})"
        ) from exc
