"""Every number of the README, docs/ and the CHANGELOG comes from a file in benchmarks/results/.

``make claims`` runs this file. The rules (what counts as a claim, what holds it) are in
tests/claims.py; a failure lists each claim with its file, line and context.
"""

from __future__ import annotations

import json

import pytest
from tests.claims import (
    Claim,
    ResultsIndex,
    extract_claims,
    needs_source,
    results_names,
    unbacked,
    unreleased,
)


def test_every_number_in_readme_docs_and_changelog_is_in_a_results_file():
    bad = unbacked()
    assert not bad, f"{len(bad)} number(s) with nothing behind them:\n" + "\n".join(
        f"  {c}  <- {why}" for c, why in bad
    )


def _texts(md: str, known=()) -> list[tuple[str, str]]:
    return [(c.kind, c.text) for c in extract_claims(md, "x.md", known)]


def test_claims_are_decimals_percentages_fractions_and_intervals():
    md = "AUC 0.878 [0.855–0.901], BUSI rows 0.911, 12% of 40/40 images, 7 folds, 8/16-bit."
    assert _texts(md) == [
        ("interval", "0.878 [0.855–0.901]"),
        ("decimal", "0.911"),
        ("percent", "12%"),
        ("fraction", "40/40"),
    ]


def test_code_settings_citations_and_history_are_not_claims():
    md = (
        "Run `buscad split --test-size 0.3\n--k 5` with NCC ≥\n0.72 and P < 0.05 on\n"
        "Python 3.11, torch 2.13.0 (Sci Data 11:148, DOI 10.7937/9WKK-Q141).\n\n"
        "    buscad train --lr 0.001\n\n"
        "```\nauc: 0.5\n```\n"
        "Now 0.829 (was 0.803; before: stack 0.777), [a link](docs/v1.5.md) and 1e-12."
    )
    assert _texts(md) == [("decimal", "0.829")]


def test_paragraph_names_its_results_files():
    known = ["deep_cv.json", "external.json", "external.md"]
    md = "- lite0 0.878 (`deep_cv.json`)\n- recipe 0.840 in `results/external.{json,md}`\n\n0.5"
    claims = extract_claims(md, "x.md", known)
    assert [(c.text, c.sources, c.line) for c in claims] == [
        ("0.878", ("deep_cv.json",), 1),
        ("0.840", ("external.json", "external.md"), 2),
        ("0.5", (), 4),
    ]
    assert results_names("see a.{json,md} and b.csv") == {"a.json", "a.md", "b.csv"}
    assert needs_source(claims[2]) is False
    assert needs_source(Claim("x.md", 1, "0.912", "decimal", "")) is True


def test_changelog_released_sections_are_history():
    text = "# C\n## [Unreleased]\n- now 0.91\n## [1.0.0] - 2026-01-01\n- then 0.42\n"
    assert [(c.text, c.line) for c in extract_claims(unreleased(text), "CHANGELOG.md")] == [
        ("0.91", 3)
    ]


@pytest.fixture
def index(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "a.json").write_text(
        json.dumps({"m": {"auc": 0.87812, "auc_ci": [0.8550, 0.90119]}, "n": 40, "p": 0.125})
    )
    (res / "b.md").write_text("| x | 0.9125 | 3.04 |\n| y | 0.5 [0.4–0.6] |\n")
    return ResultsIndex(res)


def claim(text: str, kind: str = "decimal", sources: tuple[str, ...] = ()) -> Claim:
    return Claim("x.md", 1, text, kind, "", sources)


def test_a_claim_is_held_at_its_printed_precision(index):
    assert index.holds(claim("0.878"))
    assert index.holds(claim("0.88"))
    assert not index.holds(claim("0.879"))
    assert index.holds(claim("0.913")) and index.holds(claim("0.912"))  # 0.9125: either way
    assert index.holds(claim("12.5%", "percent"))  # 0.125 as a percentage
    assert index.holds(claim("40/40", "fraction"))
    assert not index.holds(claim("40/41", "fraction"))


def test_named_files_restrict_where_a_claim_may_be_held(index):
    assert index.holds(claim("3.04", sources=("b.md",)))
    assert not index.holds(claim("3.04", sources=("a.json",)))


def test_an_interval_is_held_by_one_record(index):
    assert index.holds(claim("0.878 [0.855–0.901]", "interval"))
    assert index.holds(claim("0.5 [0.4–0.6]", "interval"))
    # every number exists, but not in one record
    assert not index.holds(claim("0.878 [0.4–0.6]", "interval"))
