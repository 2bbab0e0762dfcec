"""Property-based API test: requests generated from the OpenAPI schema never get a 5xx.

Schemathesis generates bodies, paths and query values for every operation of
``/openapi.json`` (bounded: a few examples each, derandomized, so the test is
short and repeatable). Study routes are called with a reader's token, so the
generated input reaches past authentication.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")

import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from hypothesis import HealthCheck, settings  # noqa: E402

from buscad.data.phantom import generate_cohort  # noqa: E402
from buscad.reader.store import ReaderStudy  # noqa: E402
from buscad.serve.app import create_app  # noqa: E402
from serve_predictor import ContrastPredictor  # noqa: E402


def _build():
    """The app over a small phantom study in a temporary folder (removed after the module)."""
    root = Path(tempfile.mkdtemp(prefix="buscad-schemathesis-"))
    man = generate_cohort(2, root / "cases", seed=2, normal_fraction=0.0)
    st = ReaderStudy.create(root / "study.sqlite", man.source, washout_days=0, seed=1)
    st.add_reader("R01")
    token = st.issue_reader_token("R01")
    app = create_app(
        ContrastPredictor(),
        study_db=root / "study.sqlite",
        study_dir=man.source.parent,
        open_case_screen=True,
        allowed_hosts=["testserver", "localhost"],
    )
    return root, token, app


_ROOT, _TOKEN, _APP = _build()
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP)


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    shutil.rmtree(_ROOT, ignore_errors=True)


@schema.parametrize()
@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_5xx_for_generated_requests(case):
    response = case.call(headers={"Authorization": f"Bearer {_TOKEN}"})
    assert response.status_code < 500, (case.method, case.path, response.text[:200])
