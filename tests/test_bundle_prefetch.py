"""A bundle imports the radiomics stack on a background thread while its segmenter outlines."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from buscad.bundle.bundle import _prefetch


def _join(name: str) -> None:
    for t in threading.enumerate():
        if t.name == f"import {name}":
            t.join(timeout=30)


def test_prefetch_imports_on_a_daemon_thread(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "buscad_prefetch_ok.py").write_text(
        "import threading\nTHREAD = threading.current_thread().name\n"
    )
    (tmp_path / "buscad_prefetch_bad.py").write_text("raise RuntimeError('broken stack')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("buscad_prefetch_ok", "buscad_prefetch_bad"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    _prefetch("buscad_prefetch_ok")
    _join("buscad_prefetch_ok")
    import buscad_prefetch_ok

    assert buscad_prefetch_ok.THREAD == "import buscad_prefetch_ok"
    _prefetch("buscad_prefetch_bad")  # the failure is left to the real import
    _join("buscad_prefetch_bad")
    with pytest.raises(RuntimeError, match="broken stack"):
        import buscad_prefetch_bad  # noqa: F401
