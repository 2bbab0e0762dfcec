"""Typed errors. Every message is one line that names the file (or key) and the problem."""

from __future__ import annotations

from os import PathLike


class BuscadError(Exception):
    """Base class of every error buscad raises on purpose."""


class InputFileError(BuscadError):
    """A file could not be used. ``str(err)`` is ``"<path>: <problem>"`` on one line.

    Parameters
    ----------
    path : path-like
        The offending file.
    problem : str
        What is wrong with it, in plain words.
    """

    def __init__(self, path: str | PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # force a single line
        super().__init__(f"{self.path}: {self.problem}")


class ImageReadError(InputFileError):
    """An image could not be read (missing, empty, truncated, wrong type, unsupported)."""


class MaskError(InputFileError):
    """A mask could not be read or does not fit its image."""


class ManifestError(InputFileError):
    """A manifest is malformed (missing columns, unknown labels, duplicate ids, bad rows)."""


class ConfigError(InputFileError):
    """A configuration file is invalid; the message names the bad key."""


class ConfigProblems(ConfigError):
    """Every problem found in one configuration file, one line each.

    ``str(err)`` is one ``"<file>: <key>: <problem>"`` line per problem (a single
    problem reads exactly like a :class:`ConfigError`).

    Parameters
    ----------
    path : path-like
        The configuration file.
    problems : list of str
        ``"<key>: <problem>"`` for each problem, each forced to one line.
    """

    def __init__(self, path: str | PathLike[str], problems: list[str]) -> None:
        self.problems = [" ".join(str(p).split()) for p in problems] or ["invalid configuration"]
        super().__init__(path, "; ".join(self.problems))
        self.args = ("\n".join(self.lines),)

    @property
    def lines(self) -> list[str]:
        """One ``"<file>: <key>: <problem>"`` line per problem."""
        return [f"{self.path}: {p}" for p in self.problems]

    def __str__(self) -> str:
        return "\n".join(self.lines)


class ModelFileError(InputFileError):
    """A model checkpoint or bundle is missing, corrupt or incompatible."""


class DecodeBudgetError(ImageReadError):
    """An image or mask would decode to more pixels or bytes than the budget allows.

    Raised from header fields before any full decode (decompression bombs).
    """


class UnsupportedModalityError(ImageReadError):
    """A DICOM file is not ultrasound (the message names the modality)."""


class MaskDecodeBudgetError(DecodeBudgetError, MaskError):
    """A mask would decode beyond the budget: both a :class:`DecodeBudgetError` and a :class:`MaskError`."""


def internal_error(file: object, exc: BaseException) -> str:
    """``internal error reading FILE: <ExcType>: message`` (one line, bounded)."""
    msg = " ".join(str(exc).split())[:200]
    return f"internal error reading {file}: {type(exc).__name__}: {msg}"
