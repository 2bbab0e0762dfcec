"""tests/required.py: a missing browser or Ray skips locally and fails under CI=true."""

from __future__ import annotations

import pytest
from tests.required import in_ci, missing, require_module


@pytest.mark.parametrize(
    ("value", "expected"), [("true", True), ("TRUE", True), ("1", False), ("", False)]
)
def test_in_ci_reads_the_ci_variable(monkeypatch, value, expected):
    monkeypatch.setenv("CI", value)
    assert in_ci() is expected


def test_missing_tool_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no chromium here"):
        missing("no chromium here")
    with pytest.raises(pytest.skip.Exception, match="no such module"):
        require_module("buscad_no_such_module", "no such module")


def test_missing_tool_fails_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no chromium here \(CI=true"):
        missing("no chromium here")
    with pytest.raises(pytest.fail.Exception, match="Ray is optional"):
        require_module("buscad_no_such_module", "Ray is optional", allow_module_level=True)


def test_present_module_is_returned(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert require_module("json", "json is missing").dumps([1]) == "[1]"
