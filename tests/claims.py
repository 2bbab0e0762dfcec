"""Which numbers of the README, docs/ and the CHANGELOG no file in benchmarks/results/ holds.

A *claim* is a number in the prose of ``README.md``, ``docs/*.md`` or the
``[Unreleased]`` section of ``CHANGELOG.md`` (released sections are history and are
not checked):

* an estimate with its interval (``0.878 [0.855–0.901]``);
* a decimal number (``0.878``, ``7.0``, ``1.17x``);
* a percentage (``12%``, ``12 %``);
* a fraction of integers (``40/40``).

Plain integers (counts, sizes, seconds) are not checked: too many of them are settings.

Not claims: text inside fenced, indented or inline code (commands, config values,
file names), link targets, version numbers (``2.13.0``, ``Python 3.11``), citations
(``Sci Data 11:148``, DOIs), a number right after a comparison sign (``NCC ≥ 0.72``,
``P < 0.05``, ``F = 4.456319``: settings and reference values, not measurements),
a previous value in the same clause after "was", "before" or "previously"
(``0.829 (was 0.803)``: history, kept to say what changed), and the entries of
:data:`EXEMPT` (each with its reason).

A claim is *held* when a number in some file of ``benchmarks/results/`` (every
numeric value of the JSON files, every number in the CSV and Markdown files)
rounds to it at the claim's printed precision (``0.878`` is held by
``0.87812``; a percentage ``12%`` by ``12.3`` or ``0.123``; a fraction ``a/b`` when
both ``a`` and ``b`` are held; an interval when one record, i.e. one JSON object with
its lists, one CSV row or one Markdown line, holds all three numbers). When the
paragraph (a blank-line block or one list item) of a claim names results files
(``deep_cv.json``, ``results/external.{json,md}``), only those files may hold it. A
number printed to three or more decimals (an AUC, a p-value) must be in such a
paragraph: big files hold almost every 3-decimal AUC somewhere, so only a named file
makes the check mean something.

Run ``make claims`` (or ``python -m pytest tests/test_claims.py``); the test lists
every claim that fails, with its file, line, context and reason.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
#: (file, exact claim text, reason): numbers in prose that are not results.
EXEMPT: tuple[tuple[str, str, str], ...] = (
    (
        "README.md",
        "0.920",
        "the frozen-feature logistic regression on BUSI of ../shared/BASELINE.md, quoted as "
        "the reference to beat, not measured here",
    ),
)


@dataclass(frozen=True)
class Claim:
    """One number (or interval) claimed in a document."""

    file: str
    line: int
    text: str
    kind: str  # "decimal", "percent", "fraction" or "interval"
    context: str
    sources: tuple[str, ...] = ()  # results files named in its paragraph

    @property
    def numbers(self) -> tuple[str, ...]:
        """The number(s) as printed: one, or an interval's estimate, low and high."""
        return tuple(re.findall(r"\d+(?:\.\d+)?", self.text.replace(",", "")))

    def __str__(self) -> str:
        where = f" (looked in {', '.join(self.sources)})" if self.sources else ""
        return f"{self.file}:{self.line}: {self.text}{where}: ...{self.context}..."


_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"`(?:[^`\n]|\n(?!\s*\n))*`")
_LINK_TARGET = re.compile(r"\]\([^)]*\)")
_CITATION = re.compile(
    r"(?:doi\s*|DOI\s*)10\.\d{4,}/\S+|\b\d+:\d+\b|\bv?\d+\.\d+\.\d+(?:\.\d+)*\b"
    r"|\b(?:Python|python|torch|torchvision|pydicom|Apache-|CC0|CC BY)\s*[<>=≥≤]*\s*\d+(?:\.\d+)*"
    r"|\d+(?:\.\d+)?e-?\d+"
)
_DEC = r"\d+\.\d+"
_INTERVAL = re.compile(rf"(?<![\w.])({_DEC})\**\s*\[({_DEC})\s*[–-]\s*({_DEC})\]")
_NUMBER = re.compile(
    r"(?<![\w.])(?P<frac>\d+/\d+)(?![\w/-])"
    r"|(?<![\w.])(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?P<pct>\s?%)?(?![\d])"
)
_COMPARISON = re.compile(r"(?:[<>=≥≤≈~]|\+/-|±)\s*$")
_HISTORY = re.compile(r"\b(?:was|before|previously|used to be)\b[^;()]*$", re.I)
_RESULTS_NAME = re.compile(r"\b([\w.-]+)\.(json|md|csv|\{[\w,]+\})(?![\w])")


def results_names(text: str) -> set[str]:
    """File names ending in .json, .md or .csv in ``text``; ``x.{json,md}`` names both."""
    out = set()
    for stem, ext in _RESULTS_NAME.findall(text):
        for e in ext.strip("{}").split(","):
            out.add(f"{stem}.{e}")
    return out


def _prose(text: str) -> list[tuple[int, str, str]]:
    """(line number, prose, raw line) of every line; code blocks, inline code, links blanked."""
    lines = text.splitlines()
    prose = list(lines)
    in_fence = False
    blocks: list[list[int]] = [[]]
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            in_fence = not in_fence
            prose[i] = ""
            continue
        if in_fence:
            prose[i] = ""
        if not prose[i].strip():
            blocks.append([])
        else:
            blocks[-1].append(i)
    for block in blocks:  # indented code: a blank-line block whose lines are all indented 4+
        if block and all(prose[i].startswith("    ") for i in block):
            for i in block:
                prose[i] = ""
    # inline code (which may run over a line break) and link targets, blanked in place
    joined = _INLINE_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), "\n".join(prose))
    joined = _LINK_TARGET.sub(lambda m: "]" + " " * (len(m.group()) - 1), joined)
    joined = _CITATION.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), joined)
    return [(i + 1, p, lines[i]) for i, p in enumerate(joined.split("\n"))]


def _paragraphs(lines: list[tuple[int, str, str]]) -> Iterator[list[tuple[int, str, str]]]:
    """Blank-line separated blocks, each list item (``- ``, ``* ``, ``1. ``) a block of its own."""
    cur: list[tuple[int, str, str]] = []
    for row in lines:
        line = row[1]
        starts_item = re.match(r"^\s*(?:[-*+]|\d+\.)\s", line) is not None
        if not line.strip() or starts_item:
            if cur:
                yield cur
            cur = [row] if line.strip() else []
            continue
        cur.append(row)
    if cur:
        yield cur


def unreleased(text: str) -> str:
    """The CHANGELOG's ``[Unreleased]`` section, other lines blanked (line numbers kept)."""
    out, keep = [], False
    for line in text.splitlines():
        if line.startswith("## "):
            keep = "unreleased" in line.lower()
        out.append(line if keep else "")
    return "\n".join(out)


def extract_claims(text: str, file: str, known: Iterable[str] = ()) -> list[Claim]:
    """The claims of one Markdown document; ``known``: the results files' names."""
    names = set(known)
    claims = []
    for para in _paragraphs(_prose(text)):
        raw = " ".join(r for _, _, r in para)
        sources = tuple(sorted(results_names(raw) & names))
        joined = "\n".join(p for _, p, _ in para)
        starts = np.cumsum([0] + [len(p) + 1 for _, p, _ in para])

        def line_of(pos: int, para=para, starts=starts) -> int:
            return para[int(np.searchsorted(starts, pos, side="right")) - 1][0]

        taken: list[tuple[int, int]] = []
        found: list[tuple[int, str, str]] = []
        for m in _INTERVAL.finditer(joined):
            taken.append(m.span())
            found.append((m.start(), "interval", f"{m[1]} [{m[2]}–{m[3]}]"))
        for m in _NUMBER.finditer(joined):
            if any(a <= m.start() < b for a, b in taken):
                continue
            if m.group("frac"):
                kind = "fraction"
            elif m.group("pct"):
                kind = "percent"
            elif "." in m.group("num"):
                kind = "decimal"
            else:
                continue
            found.append((m.start(), kind, m.group().strip()))
        for pos, kind, value in sorted(found):
            before = joined[:pos]
            if _COMPARISON.search(before) or _HISTORY.search(before[-60:]):
                continue
            if any(f == file and t == value for f, t, _ in EXEMPT):
                continue
            ctx = " ".join(joined[max(0, pos - 40) : pos + len(value) + 30].split())
            claims.append(Claim(file, line_of(pos), value, kind, ctx, sources))
    return claims


def document_claims(repo: Path = REPO) -> list[Claim]:
    """Claims of README.md, docs/*.md and the CHANGELOG's [Unreleased] section."""
    names = [p.name for p in (repo / "benchmarks" / "results").iterdir() if p.is_file()]
    docs = [repo / "README.md", *sorted((repo / "docs").glob("*.md")), repo / "CHANGELOG.md"]
    out = []
    for p in docs:
        text = p.read_text(encoding="utf-8")
        if p.name == "CHANGELOG.md":
            text = unreleased(text)
        out += extract_claims(text, str(p.relative_to(repo)), names)
    return out


def _numbers_in_text(text: str) -> Iterator[float]:
    for m in re.finditer(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?", text):
        try:
            yield float(m.group().replace(",", ""))
        except ValueError:
            continue


def _json_records(obj: object) -> Iterator[list[float]]:
    """Each dict's numbers: its numeric values and the numbers of its lists of numbers."""
    if isinstance(obj, dict):
        rec: list[float] = []
        for v in obj.values():
            if isinstance(v, int | float) and not isinstance(v, bool):
                rec.append(float(v))
            elif isinstance(v, list) and all(
                isinstance(x, int | float) and not isinstance(x, bool) for x in v
            ):
                rec += [float(x) for x in v]
            else:
                yield from _json_records(v)
        if rec:
            yield rec
    elif isinstance(obj, list):
        for v in obj:
            yield from _json_records(v)


def file_records(path: Path) -> list[list[float]]:
    """The numbers of a results file, grouped: JSON objects, CSV rows, text lines."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".json":
        recs = list(_json_records(json.loads(text)))
        recs.append(list(_numbers_in_text(json.dumps(json.loads(text)))))  # numbers in text
    elif path.suffix == ".csv":
        recs = [
            [x for c in row for x in _numbers_in_text(c)] for row in csv.reader(text.splitlines())
        ]
    else:
        recs = [list(_numbers_in_text(line)) for line in text.splitlines()]
    return [[v for v in r if math.isfinite(v)] for r in recs if r]


def _rounded(v: float, places: int) -> set[str]:
    """``v`` at ``places`` decimals, rounded half-up and half-even (both are printed)."""
    if abs(v) >= 1e15:
        return {f"{v:.{places}f}"}
    q = Decimal(1).scaleb(-places)
    d = Decimal(repr(v))
    return {str(d.quantize(q, rounding=ROUND_HALF_UP)), f"{v:.{places}f}"}


class ResultsIndex:
    """The numbers of every file in ``benchmarks/results/``, by file name."""

    def __init__(self, results: Path = RESULTS) -> None:
        self.records = {p.name: file_records(p) for p in sorted(results.iterdir()) if p.is_file()}
        self._printed: dict[tuple[str, int, bool], set[str]] = {}

    def printed(self, file: str, places: int, percent: bool = False) -> set[str]:
        """Every number of ``file`` as printed with ``places`` decimals (x100 too for percent).

        Magnitudes: the claim's number is read without its sign (``−0.008`` as ``0.008``).
        """
        key = (file, places, percent)
        if key not in self._printed:
            vals = {abs(v) for r in self.records[file] for v in r}
            if percent:
                vals |= {v * 100 for v in vals}
            self._printed[key] = set().union(*(_rounded(v, places) for v in vals))
        return self._printed[key]

    def holds(self, claim: Claim) -> bool:
        """Whether a results file (one of ``claim.sources`` when given) holds the claim.

        An interval ``x [lo–hi]`` must be held by one record (a JSON object with its
        lists, a CSV row, a text line) holding all three numbers.
        """
        files = claim.sources or tuple(self.records)
        nums = claim.numbers
        if claim.kind == "interval":
            places = [len(x.split(".")[1]) for x in nums]
            return any(
                all(
                    any(x in _rounded(v, k) for v in rec) for x, k in zip(nums, places, strict=True)
                )
                for f in files
                for rec in self.records[f]
            )
        if claim.kind == "fraction":
            return all(any(x in self.printed(f, 0) for f in files) for x in nums)
        text = nums[0]
        places = len(text.split(".")[1]) if "." in text else 0
        return any(text in self.printed(f, places, claim.kind == "percent") for f in files)


def needs_source(claim: Claim) -> bool:
    """A number printed to 3 or more decimals (an AUC, a p-value) whose paragraph names no file."""
    return not claim.sources and any(len(x.partition(".")[2]) >= 3 for x in claim.numbers)


def unbacked(repo: Path = REPO) -> list[tuple[Claim, str]]:
    """Every claim of the documents that no results file holds, with the reason."""
    index = ResultsIndex(repo / "benchmarks" / "results")
    out = []
    for c in document_claims(repo):
        if not index.holds(c):
            out.append((c, "no results file holds it"))
        elif needs_source(c):
            out.append((c, "its paragraph names no results file (e.g. `results/x.json`)"))
    return out
