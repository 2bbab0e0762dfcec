"""Reader-study mode of the web app: every step, washout, resume after a restart or a crash.

Every study route takes a bearer token: the organiser's or the reader's own
(the authorisation matrix itself is in test_webapp_security.py).
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from buscad.data.phantom import generate_cohort
from buscad.reader.store import READS_COLUMNS, ReaderStudy
from buscad.serve.app import create_app
from serve_predictor import ContrastPredictor

REPO = Path(__file__).resolve().parents[1]
N_CASES = 5


class FakeClock:
    def __init__(self) -> None:
        self.t = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.t


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    return generate_cohort(N_CASES, tmp_path_factory.mktemp("study_cases"), seed=5)


def local(app) -> TestClient:
    return TestClient(app, base_url="http://127.0.0.1")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Setup:
    """A study database, its organiser token, and a client factory (one per 'server')."""

    def __init__(self, db: Path, study_dir: Path, clock: FakeClock) -> None:
        self.db, self.study_dir, self.clock = db, study_dir, clock
        self.tokens: dict[str, str] = {}
        self.org = ReaderStudy.prepare(db).issue_organiser_token()

    def client(self) -> TestClient:
        app = create_app(
            ContrastPredictor(), study_db=self.db, study_dir=self.study_dir, study_clock=self.clock
        )
        return local(app)

    def enrol(self, c: TestClient, rid: str) -> str:
        r = c.post("/api/study/readers", json={"reader_id": rid}, headers=auth(self.org))
        assert r.status_code == 201, r.text
        self.tokens[rid] = r.json()["token"]
        return self.tokens[rid]


@pytest.fixture()
def setup(cohort, tmp_path):
    return Setup(tmp_path / "study.sqlite", cohort.source.parent, FakeClock())


def create(c: TestClient, cohort, org: str, **kw):
    body = {"manifest": cohort.source.name, "washout_days": 14, "seed": 1, **kw}
    return c.post("/api/study", json=body, headers=auth(org))


def read(c, rid, tok, case, rnd, birads="3", **kw):
    return c.post(
        f"/api/study/readers/{rid}/reads",
        json={"case_id": case, "round": rnd, "birads": birads, **kw},
        headers=auth(tok),
    )


def test_study_disabled_without_db(cohort):
    with local(create_app(ContrastPredictor())) as c:
        assert c.get("/api/study").json() == {"enabled": False, "exists": False}
        r = c.post("/api/study/sessions", headers=auth("x" * 43))
        assert r.status_code == 404 and "--study-db" in r.json()["detail"]
        assert c.get("/reader").status_code == 200
        assert c.get("/").status_code == 200  # no study: the case screen is on


def test_organiser_creates_study(setup, cohort, tmp_path):
    db, org = setup.db, setup.org
    with setup.client() as c:
        assert c.get("/api/study").json() == {
            "enabled": True,
            "exists": False,
            "create_from_web": True,
        }
        r = c.post("/api/study/sessions", headers=auth("x" * 43))
        assert r.status_code == 404 and "no reader study yet" in r.json()["detail"]
        names = c.get("/api/study/manifests", headers=auth(org)).json()["manifests"]
        assert names == [cohort.source.name]
        bad = c.post("/api/study", json={"manifest": "nope.csv"}, headers=auth(org))
        assert bad.status_code == 404 and "'nope.csv'" in bad.json()["detail"]
        r = create(c, cohort, org, readers=["R09"])
        assert r.status_code == 201, r.text
        assert r.json()["n_cases"] == N_CASES and r.json()["readers"] == ["R09"]
        tok = r.json()["tokens"]["R09"]["token"]
        assert r.json()["tokens"]["R09"]["link"] == f"http://127.0.0.1/reader#token={tok}"
        assert create(c, cohort, org).status_code == 409
        s = c.get("/api/study", headers=auth(org)).json()
        assert s["exists"] and s["n_cases"] == N_CASES and s["washout_days"] == 14
        assert [r["reader_id"] for r in s["readers"]] == ["R09"]
        me = c.post("/api/study/sessions", headers=auth(tok)).json()
        assert me["reader_id"] == "R09" and me["status"] == "round1"
    assert ReaderStudy.open(db).case_ids() == list(cohort.df["image_id"].astype(str))


def test_full_reader_session(setup, cohort):
    db, clock, org = setup.db, setup.clock, setup.org
    with setup.client() as c:
        create(c, cohort, org)
        r = c.post("/api/study/readers", json={"reader_id": "bad name!"}, headers=auth(org))
        assert r.status_code == 422 and "pseudonym" in r.json()["detail"]
        tok = setup.enrol(c, "R01")
        s = c.post("/api/study/sessions", headers=auth(tok)).json()
        assert s["reader_id"] == "R01" and s["status"] == "round1" and s["round"] == 1
        h = auth(tok)
        order1 = ReaderStudy.open(db).case_order("R01", 1)
        seen = []
        for i in range(N_CASES):
            nxt = c.get("/api/study/readers/R01/next", headers=h).json()
            case = nxt["case"]
            assert case["round"] == 1 and case["ai"] is None  # no AI in round 1
            assert case["position"] == i + 1 and case["n_cases"] == N_CASES
            assert case["warnings"] == []
            img = c.get(case["image_url"], headers=h)
            assert img.status_code == 200 and img.headers["content-type"] == "image/png"
            hm = c.get(f"/api/study/cases/{case['case_id']}/heatmap.png", headers=h)
            assert hm.status_code == 403 and "round 2 only" in hm.json()["detail"]
            if i == 0:
                early = read(c, "R01", tok, case["case_id"], 2)
                assert (
                    early.status_code == 409 and "round 1 is not finished" in early.json()["detail"]
                )
                bad = read(c, "R01", tok, case["case_id"], 1, birads="7")
                assert bad.status_code == 422 and "BI-RADS" in bad.json()["detail"]
                bad = read(c, "R01", tok, case["case_id"], 1, confidence=150)
                assert bad.status_code == 422 and "confidence" in bad.json()["detail"]
            r = read(
                c, "R01", tok, case["case_id"], 1, birads="4a", confidence=30, client_time_s=0.01
            )
            assert r.status_code == 201, r.text
            assert r.json()["time_taken_s"] == pytest.approx(0.01)
            assert r.json()["server_time_s"] is not None
            dup = read(c, "R01", tok, case["case_id"], 1, birads="5")
            assert dup.status_code == 409 and "cannot be changed" in dup.json()["detail"]
            seen.append(case["case_id"])
        assert seen == order1  # the reader's stored random order
        # washout: round 2 is closed and says when it opens
        nxt = c.get("/api/study/readers/R01/next", headers=h).json()
        assert nxt["case"] is None and nxt["status"] == "washout"
        opens = datetime.fromisoformat(nxt["round2_opens_at"])
        assert opens == clock.t + timedelta(days=14)
        clock.t += timedelta(days=14, seconds=1)
        order2 = ReaderStudy.open(db).case_order("R01", 2)
        shown = {}
        for i in range(N_CASES):
            case = c.get("/api/study/readers/R01/next", headers=h).json()["case"]
            assert case["round"] == 2 and case["case_id"] == order2[i]
            ai = case["ai"]
            assert 0 <= ai["ai_score"] <= 1 and ai["band"]["note"].startswith("Decision support")
            shown[case["case_id"]] = ai["ai_score"]
            assert ai["roi_source"] == "mask"  # the manifest's lesion mask is used
            # the models read the manifest row's inputs: the age-reading model runs
            row = cohort.df.set_index(cohort.df["image_id"].astype(str)).loc[case["case_id"]]
            if pd.notna(row["age"]):
                assert "clinical" not in ai["skipped_models"], ai["skipped_models"]
                assert ai["model_scores"]["clinical"] is not None
                assert ai["inputs"] == [
                    {
                        "name": "age",
                        "label": "Age (years)",
                        "value": int(row["age"]),
                        "source": "entered",
                        "outline": False,
                    }
                ]
            assert ai["decision_text"].startswith("AI call: ")
            hm = c.get(ai["heatmap_url"], headers=h)
            assert hm.status_code == 200
            assert Image.open(io.BytesIO(hm.content)).mode == "RGBA"
            # server-side time wins when the browser's is implausible
            r = read(c, "R01", tok, case["case_id"], 2, birads="4b", client_time_s=1e6)
            assert r.status_code == 201
            assert r.json()["time_taken_s"] == pytest.approx(r.json()["server_time_s"])
            assert r.json()["time_taken_s"] < 100
        done = c.get("/api/study/readers/R01/next", headers=h).json()
        assert done["case"] is None and done["status"] == "done" and done["complete"]
        csv = c.get("/api/study/export.csv", headers=auth(org))
        assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    df = pd.read_csv(io.StringIO(csv.text), dtype={"birads": str})
    assert list(df.columns) == list(READS_COLUMNS)
    assert len(df) == 2 * N_CASES
    assert (df["with_ai"] == (df["round"] == 2).astype(int)).all()
    assert df.loc[df["round"] == 1, "ai_score"].isna().all()
    assert df.loc[df["round"] == 2, "ai_score"].notna().all()
    assert set(df.loc[df["round"] == 1, "birads"]) == {"4a"}
    assert (df.loc[df["round"] == 1, "confidence"] == 30).all()
    # the stored AI score is the one shown
    r2 = df[df["round"] == 2].set_index("case_id")["ai_score"]
    assert r2.to_dict() == pytest.approx(shown)
    assert np.isfinite(df["time_taken_s"]).all()


def test_resume_after_restart_loses_no_read(setup, cohort):
    db, org = setup.db, setup.org
    with setup.client() as c:
        create(c, cohort, org)
        tok = setup.enrol(c, "R02")
        h = auth(tok)
        first = []
        for _ in range(3):
            case = c.get("/api/study/readers/R02/next", headers=h).json()["case"]
            assert read(c, "R02", tok, case["case_id"], 1, birads="2").status_code == 201
            first.append(case["case_id"])
        # the reader saw a 4th case but closed the tab before answering
        pending = c.get("/api/study/readers/R02/next", headers=h).json()["case"]["case_id"]
    # a new server process on the same file
    with setup.client() as c2:
        s = c2.post("/api/study/sessions", headers=h).json()
        assert s["reader_id"] == "R02" and s["round1_done"] == 3
        nxt = c2.get("/api/study/readers/R02/next", headers=h).json()["case"]
        assert nxt["case_id"] == pending and nxt["position"] == 4
        r = read(c2, "R02", tok, pending, 1)
        assert r.status_code == 201
        assert r.json()["time_taken_s"] == r.json()["server_time_s"] >= 0
        df = pd.read_csv(io.StringIO(c2.get("/api/study/export.csv", headers=auth(org)).text))
    assert list(df["case_id"]) == [*first, pending]
    assert list(ReaderStudy.open(db).reads()["case_id"]) == [*first, pending]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SERVER = """
import sys, uvicorn
from serve_predictor import ContrastPredictor
from buscad.serve.app import create_app
uvicorn.run(create_app(ContrastPredictor(), study_db=sys.argv[1]), host="127.0.0.1",
            port=int(sys.argv[2]), log_level="warning")
"""


def _start_server(db: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])}
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(db), str(port)], env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("test server did not start")


@pytest.mark.slow
def test_killed_server_loses_no_read(cohort, tmp_path):
    db = tmp_path / "crash.sqlite"
    st = ReaderStudy.create(db, cohort.source, washout_days=0, seed=2)
    st.add_reader("R03")
    h = auth(st.issue_reader_token("R03"))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start_server(db, port)
    try:
        answered = []
        for _ in range(2):
            nxt = httpx.get(f"{base}/api/study/readers/R03/next", headers=h).json()
            case = nxt["case"]["case_id"]
            r = httpx.post(
                f"{base}/api/study/readers/R03/reads",
                json={"case_id": case, "round": 1, "birads": "4c"},
                headers=h,
            )
            assert r.status_code == 201
            answered.append(case)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # a crash: no shutdown handlers run
        proc.wait(10)
    assert list(ReaderStudy.open(db).reads()["case_id"]) == answered
    proc = _start_server(db, port)
    try:
        nxt = httpx.get(f"{base}/api/study/readers/R03/next", headers=h).json()
        assert nxt["round1_done"] == 2 and nxt["case"]["position"] == 3
        assert nxt["case"]["case_id"] == ReaderStudy.open(db).case_order("R03", 1)[2]
    finally:
        proc.terminate()
        proc.wait(10)


def test_missing_case_image_is_reported_and_server_goes_on(tmp_path):
    man = generate_cohort(2, tmp_path / "cases", seed=8)
    db = tmp_path / "s.sqlite"
    st = ReaderStudy.create(db, man.source, washout_days=0)
    st.add_reader("R04")
    h = auth(st.issue_reader_token("R04"))
    man.image_path(0).unlink()
    gone = str(man.df["image_id"].iat[0])
    with local(create_app(ContrastPredictor(), study_db=db)) as c:
        r = c.get(f"/api/study/cases/{gone}/image.png", headers=h)
        assert r.status_code == 500  # a server fault, not bad input
        assert r.json()["detail"] == (
            "a study case could not be read on the server; the organiser can check the log"
        )
        assert str(tmp_path) not in r.text  # no server path over HTTP
        other = str(man.df["image_id"].iat[1])
        assert c.get(f"/api/study/cases/{other}/image.png", headers=h).status_code == 200
        assert c.get("/api/study/cases/nope/image.png", headers=h).status_code == 404
