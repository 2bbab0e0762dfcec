"""Security of the web app: one test per hole the hostile tester found.

File disclosure through the study manifest, reader-study authentication and the
round-1 AI embargo, uploads left behind after ``kill -9``, untyped 500s on bad
input, browser-facing headers and the Host check, local API docs, and bounded
upload decoding.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from buscad.data.phantom import generate_cohort
from buscad.reader.store import ReaderStudy
from buscad.serve import imaging
from buscad.serve.app import CSP, SECURITY_HEADERS, create_app
from serve_predictor import ContrastPredictor, make_dicom

REPO = Path(__file__).resolve().parents[1]
SALT = "salt-4f9c1e-never-shown"


def local(app) -> TestClient:
    return TestClient(app, base_url="http://127.0.0.1")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    return generate_cohort(3, tmp_path_factory.mktemp("sec_cases"), seed=11, normal_fraction=0.0)


@pytest.fixture(scope="module")
def png(cohort) -> bytes:
    return cohort.image_path(0).read_bytes()


class Study:
    """A study with readers A (R01) and B (R02), both in round 1; the organiser's token."""

    def __init__(self, root: Path, cohort) -> None:
        self.db = root / "study.sqlite"
        st = ReaderStudy.create(self.db, cohort.source, washout_days=14, seed=3)
        self.org = st.issue_organiser_token()
        self.tok = {}
        for rid in ("R01", "R02"):
            st.add_reader(rid)
            self.tok[rid] = st.issue_reader_token(rid)
        self.cases = st.case_ids()


@pytest.fixture()
def study(tmp_path, cohort):
    return Study(tmp_path, cohort)


# ------------------------------------------------------------ file disclosure


@pytest.fixture()
def disclosure(tmp_path, cohort, monkeypatch):
    """A server with --study-dir holding one bad manifest, a symlink out, and a secret outside."""
    monkeypatch.setenv("BUSCAD_SALT", SALT)
    sdir = tmp_path / "manifests"
    sdir.mkdir()
    secret = tmp_path / "secret.csv"
    secret.write_text("image_id,SECRETCOLUMN\nTOPSECRETROW,1\n")
    (sdir / "bad.csv").write_text("SECRETCOLUMN2,other\nTOPSECRETROW2,1\n")
    (sdir / "link.csv").symlink_to(secret)
    db = tmp_path / "study.sqlite"
    org = ReaderStudy.prepare(db).issue_organiser_token()
    app = create_app(ContrastPredictor(), study_db=db, study_dir=sdir)
    return app, org, [secret, Path("/etc/passwd"), sdir / "bad.csv"]


NAMES = [
    "/proc/self/environ",
    "/etc/passwd",
    "../secret.csv",
    "../../../../etc/passwd",
    "manifests/../secret.csv",
    "link.csv",
    "bad.csv",
    "bad.csv\n",
    "~/.bashrc",
    "x" * 5000,
    "C:\\Windows\\win.ini",
]


@pytest.mark.parametrize("name", NAMES, ids=range(len(NAMES)))
def test_study_manifest_never_discloses_a_file(disclosure, name):
    app, org, files = disclosure
    with local(app) as c:
        r = c.post("/api/study", json={"manifest": name}, headers=auth(org))
    assert 400 <= r.status_code < 500
    body = r.content
    assert SALT.encode() not in body and b"root:" not in body
    for word in (b"SECRETCOLUMN", b"TOPSECRETROW", b"BUSCAD_SALT", b"PATH="):
        assert word not in body
    for f in files:
        assert str(f).encode() not in body and str(f.parent).encode() not in body
        if f.is_file():
            for line in f.read_bytes().splitlines():
                assert line.strip() not in body or not line.strip()


def test_manifest_listing_is_regular_files_inside_the_folder(disclosure, tmp_path):
    app, org, files = disclosure
    sdir = files[2].parent
    (sdir / "alias.csv").symlink_to(sdir / "bad.csv")  # a symlink, even one pointing inside
    (sdir / "folder.csv").mkdir()
    (sdir / "notes.txt").write_text("not a manifest")
    with local(app) as c:
        r = c.get("/api/study/manifests", headers=auth(org))
        assert r.status_code == 200 and r.json() == {"manifests": ["bad.csv"]}
        for name in ("link.csv", "alias.csv", "folder.csv"):  # POST refuses what is not listed
            r = c.post("/api/study", json={"manifest": name}, headers=auth(org))
            assert r.status_code == 404 and "no manifest named" in r.json()["detail"], name


def test_study_manifest_needs_organiser_and_study_dir(disclosure, cohort, tmp_path):
    app, _, _ = disclosure
    with local(app) as c:
        r = c.post("/api/study", json={"manifest": "bad.csv"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert (
            c.post("/api/study", json={"manifest": "bad.csv"}, headers=auth("x" * 43)).status_code
            == 401
        )
    db = tmp_path / "nodir.sqlite"
    org2 = ReaderStudy.prepare(db).issue_organiser_token()
    with local(create_app(ContrastPredictor(), study_db=db)) as c:
        r = c.post("/api/study", json={"manifest": cohort.source.name}, headers=auth(org2))
        assert r.status_code == 404 and "--study-dir" in r.json()["detail"]


# ---------------------------------------------------------- authentication


def _reader_routes(case: str) -> list[tuple[str, str, dict | None]]:
    """(method, url, json) of every route a reader uses, acting for R02."""
    return [
        ("POST", "/api/study/sessions", {"reader_id": "R02"}),
        ("GET", "/api/study/readers/R02", None),
        ("GET", "/api/study/readers/R02/next", None),
        ("POST", "/api/study/readers/R02/reads", {"case_id": case, "round": 1, "birads": "3"}),
    ]


def test_auth_matrix(study):
    app = create_app(ContrastPredictor(), study_db=study.db)
    case = study.cases[0]
    a, b = study.tok["R01"], study.tok["R02"]
    with local(app) as c:
        for method, url, body in _reader_routes(case):
            r = c.request(method, url, json=body)
            assert r.status_code == 401, (method, url)
            r = c.request(method, url, json=body, headers=auth("not-a-token"))
            assert r.status_code == 401, (method, url)
            r = c.request(method, url, json=body, headers=auth(a))  # A acting for B
            assert r.status_code == 403, (method, url, r.text)
        for url in (f"/api/study/cases/{case}/image.png", f"/api/study/cases/{case}/heatmap.png"):
            assert c.get(url).status_code == 401
        # organiser-only routes refuse readers and anonymous clients
        org_routes = [
            ("GET", "/api/study/export.csv", None),
            ("GET", "/api/study/manifests", None),
            ("POST", "/api/study", {"manifest": "m.csv"}),
            ("POST", "/api/study/readers", {"reader_id": "R03"}),
            ("DELETE", "/api/study/readers/R02/token", None),
        ]
        for method, url, body in org_routes:
            assert c.request(method, url, json=body).status_code == 401, url
            assert c.request(method, url, json=body, headers=auth(a)).status_code == 403, url
        # progress of every reader only with the organiser's token
        s = c.get("/api/study", headers=auth(a)).json()
        assert "readers" not in s and s["reader_id"] == "R01"
        assert "readers" not in c.get("/api/study").json()
        assert len(c.get("/api/study", headers=auth(study.org)).json()["readers"]) == 2
        # B's own token works, and the read is B's
        r = c.post(
            "/api/study/readers/R02/reads",
            json={"case_id": case, "round": 1, "birads": "3"},
            headers=auth(b),
        )
        assert r.status_code == 201
        assert c.get("/api/study/export.csv", headers=auth(study.org)).text.count(",R02,") == 1
        # revocation: B's token stops working at once
        assert (
            c.delete("/api/study/readers/R02/token", headers=auth(study.org)).json()["revoked"] == 1
        )
        assert c.get("/api/study/readers/R02", headers=auth(b)).status_code == 401


def test_reader_ids_and_round_are_strict(study):
    app = create_app(ContrastPredictor(), study_db=study.db)
    a = study.tok["R01"]
    with local(app) as c:
        for bad in ("R01\n", "R01 ", "../R01", "R" * 65):
            r = c.post("/api/study/readers", json={"reader_id": bad}, headers=auth(study.org))
            assert r.status_code == 422, bad
        assert c.get("/api/study/readers/R01%0A/next", headers=auth(a)).status_code == 403
        case = c.get("/api/study/readers/R01/next", headers=auth(a)).json()["case"]["case_id"]
        for rnd in (True, "1", 1.0, 3, 0):
            r = c.post(
                "/api/study/readers/R01/reads",
                json={"case_id": case, "round": rnd, "birads": "3"},
                headers=auth(a),
            )
            assert r.status_code == 422, rnd
        assert ReaderStudy.open(study.db).reads().empty


def _has_ai(resp: httpx.Response) -> bool:
    """Whether a response carries AI output: scores, a heatmap, a report."""
    ctype = resp.headers.get("content-type", "")
    if ctype.startswith("application/pdf") or "attachment" in resp.headers.get(
        "content-disposition", ""
    ):
        return b"reads" not in resp.headers.get("content-disposition", "").encode()
    if ctype.startswith("image/png"):
        return Image.open(io.BytesIO(resp.content)).mode == "RGBA"  # heatmaps are RGBA
    text = resp.text
    return any(k in text for k in ('"ai_score"', '"model_scores"', "heatmap_png", "AI score"))


def test_round1_reader_gets_no_ai_from_any_route(study, cohort, png):
    """Walk every route of the OpenAPI schema as a round-1 reader (own token, none, B's)."""
    from datetime import UTC, datetime

    def later() -> datetime:
        return datetime(2099, 1, 1, tzinfo=UTC)

    st = ReaderStudy.open(study.db)
    for cid in st.case_order("R02", 1):  # B finished round 1; the washout is over
        st.record("R02", cid, 1, "3")
    assert ReaderStudy.open(study.db, clock=later).progress("R02").round2_open
    app = create_app(ContrastPredictor(), study_db=study.db, study_clock=later)
    a = study.tok["R01"]
    case = study.cases[0]
    calls = 0
    with local(app) as c:
        spec = c.get("/openapi.json").json()
        for path, ops in spec["paths"].items():
            for method in ops:
                for rid in ("R01", "R02"):
                    url = path.replace("{reader_id}", rid).replace("{case_id}", case)
                    for headers in (auth(a), {}):
                        kw: dict = {"headers": headers}
                        if "requestBody" in ops[method]:
                            content = ops[method]["requestBody"]["content"]
                            if "multipart/form-data" in content:
                                kw["files"] = {"image": ("case.png", png)}
                            else:
                                kw["json"] = {
                                    "case_id": case,
                                    "round": 2,
                                    "birads": "3",
                                    "reader_id": rid,
                                    "manifest": "m.csv",
                                }
                        r = c.request(method.upper(), url, **kw)
                        calls += 1
                        assert not _has_ai(r), (method, url, headers != {}, r.status_code)
                        assert r.status_code < 500, (method, url, r.text)
        # the AI exists and is reachable for B in round 2: the check above can fail
        nxt = c.get("/api/study/readers/R02/next", headers=auth(study.tok["R02"]))
        assert _has_ai(nxt)
        hm = c.get(nxt.json()["case"]["ai"]["heatmap_url"], headers=auth(study.tok["R02"]))
        assert hm.status_code == 200 and _has_ai(hm)
        # A with B's heatmap URL: refused
        assert c.get(nxt.json()["case"]["ai"]["heatmap_url"], headers=auth(a)).status_code == 403
        assert c.get("/", follow_redirects=False).status_code == 303  # the case screen is off
    assert calls > 40


CASE_SCREEN_ROUTES = ("/api/predict", "/api/heatmap", "/api/report", "/api/preview", "/api/outline")


def test_open_case_screen_flag(study, png):
    app = create_app(ContrastPredictor(), study_db=study.db)
    with local(app) as c:
        for url in CASE_SCREEN_ROUTES:
            for headers in ({}, auth(study.org)):
                r = c.post(url, files={"image": ("a.png", png)}, headers=headers)
                assert r.status_code == 403 and "--open-case-screen" in r.json()["detail"]
        assert c.get("/", follow_redirects=False).headers["location"] == "/reader"
    with local(create_app(ContrastPredictor(), study_db=study.db, open_case_screen=True)) as c:
        assert c.get("/").status_code == 200
        # while a study is served, the open screen's routes are the organiser's: a reader
        # must not get AI output for a study case by uploading its image
        for url in CASE_SCREEN_ROUTES:
            r = c.post(url, files={"image": ("a.png", png)})
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", url
            r = c.post(url, files={"image": ("a.png", png)}, headers=auth("not-a-token"))
            assert r.status_code == 401, url
            for rid in ("R01", "R02"):
                r = c.post(url, files={"image": ("a.png", png)}, headers=auth(study.tok[rid]))
                assert r.status_code == 403 and "organiser" in r.json()["detail"], (url, rid)
                assert not _has_ai(r)
        r = c.post("/api/predict", files={"image": ("a.png", png)}, headers=auth(study.org))
        assert r.status_code == 200 and _has_ai(r)
        r = c.post("/api/preview", files={"image": ("a.png", png)}, headers=auth(study.org))
        assert r.status_code == 200


def test_openapi_declares_the_bearer_scheme_on_every_token_route(study, png):
    """The schema names the scheme on each route that needs a token; each answers 401 without."""
    app = create_app(ContrastPredictor(), study_db=study.db, open_case_screen=True)
    with local(app) as c:
        spec = c.get("/openapi.json").json()
        scheme = spec["components"]["securitySchemes"]["StudyToken"]
        assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
        ops = {(path, m): op for path, item in spec["paths"].items() for m, op in item.items()}
        secured = {k for k, op in ops.items() if {"StudyToken": []} in op.get("security", [])}
        study_ops = {k for k in ops if k[0].startswith("/api/study")}
        assert secured == study_ops | {(u, "post") for u in CASE_SCREEN_ROUTES}
        for path, method in sorted(secured - {("/api/study", "get")}):  # GET: public status
            url = path.replace("{reader_id}", "R01").replace("{case_id}", study.cases[0])
            kw: dict = {}
            if "multipart/form-data" in ops[path, method].get("requestBody", {}).get("content", {}):
                kw["files"] = {"image": ("a.png", png)}
            elif "requestBody" in ops[path, method]:
                kw["json"] = {"manifest": "m.csv", "reader_id": "R01", "case_id": "x"}
            r = c.request(method.upper(), url, **kw)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (
                path,
                r.text,
            )


def test_case_screen_needs_no_token_without_a_study(png):
    with local(create_app(ContrastPredictor())) as c:
        assert c.post("/api/predict", files={"image": ("a.png", png)}).status_code == 200


# ----------------------------------------------------------------- uploads


_SLOW_SERVER = """
import os, sys, time, pathlib, uvicorn
import buscad.serve.imaging as im
im.USE_MEMFD = sys.argv[3] == "memfd"
orig = im.read_image
def slow(p):
    pathlib.Path(sys.argv[2]).write_text(str(p))
    time.sleep(120)
    return orig(p)
im.read_image = slow
from serve_predictor import ContrastPredictor
from buscad.serve.app import create_app
uvicorn.run(create_app(ContrastPredictor(), decode_timeout_s=300), host="127.0.0.1",
            port=int(sys.argv[1]), log_level="warning")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(args: list[str], env: dict[str, str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_SERVER, str(port), *args], env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("test server did not start")


def _leftovers(pid: int, tmp: Path) -> list[Path]:
    dirs = [tmp, Path("/dev/shm")]
    return [p for d in dirs if d.is_dir() for p in d.glob(f"buscad-upload-{pid}-*")]


@pytest.mark.parametrize("mode", ["memfd", "tempfile"])
def test_no_upload_survives_kill_9(tmp_path, cohort, mode):
    """kill -9 during a DICOM decode, restart: no buscad-upload file of the dead server remains."""
    gray = np.asarray(Image.open(cohort.image_path(0)).convert("L"))
    dcm = make_dicom(gray)
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]),
    }
    marker = tmp_path / "decoding"
    port = _free_port()
    proc = _serve([str(marker), mode], env, port)
    try:
        # the decode is blocked: no answer
        with httpx.Client(timeout=2) as c, pytest.raises(httpx.HTTPError):
            c.post(f"http://127.0.0.1:{port}/api/preview", files={"image": ("a.dcm", dcm)})
        deadline = time.monotonic() + 20
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = marker.read_text()
        if mode == "tempfile":  # the file exists while decoding: the test can fail
            assert _leftovers(proc.pid, tmp_path) and Path(seen).exists()
        else:
            assert seen.startswith("/proc/") and not _leftovers(proc.pid, tmp_path)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    dead = proc.pid
    proc = _serve([str(tmp_path / "again"), mode], env, port)  # restart clears leftovers
    try:
        assert _leftovers(dead, tmp_path) == []
    finally:
        proc.terminate()
        proc.wait(10)


def test_clear_stale_uploads_only_touches_dead_processes(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"buscad-upload-{dead.pid}-abc.dcm"
    mine = tmp_path / f"buscad-upload-{os.getpid()}-def.dcm"
    other = tmp_path / "not-buscad.dcm"
    for p in (stale, mine, other):
        p.write_bytes(b"x")
    assert imaging.clear_stale_uploads([tmp_path]) == [stale]
    assert not stale.exists() and mine.exists() and other.exists()


def test_decoding_is_bounded_in_time_and_number(png, monkeypatch):
    import threading

    release = threading.Event()
    orig = imaging.decode_image

    def slow(data, max_bytes=None):
        release.wait(5)
        return orig(data, max_bytes)

    monkeypatch.setattr(imaging, "decode_image", slow)
    app = create_app(ContrastPredictor(), max_decodes=1, decode_timeout_s=0.4)

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            first = asyncio.create_task(c.post("/api/predict", files={"image": ("a.png", png)}))
            await asyncio.sleep(0.1)
            second = await c.post("/api/predict", files={"image": ("a.png", png)})
            return [await first, second]

    first, second = asyncio.run(go())
    assert first.status_code == 422 and "longer than 0.4 s to decode" in first.json()["detail"]
    assert second.status_code == 503 and "busy" in second.json()["detail"]
    release.set()
    time.sleep(0.3)  # the blocked decode ends and frees its slot
    with local(app) as c:
        assert c.post("/api/predict", files={"image": ("a.png", png)}).status_code == 200


def test_decode_budget_is_413_and_modality_422(png, monkeypatch):
    from buscad.errors import DecodeBudgetError, UnsupportedModalityError

    def bomb(p):
        raise DecodeBudgetError(p, "would decode to 40000x40000 pixels, above the budget")

    app = create_app(ContrastPredictor())
    with local(app) as c:
        monkeypatch.setattr(imaging, "read_image", bomb)
        r = c.post("/api/predict", files={"image": ("a.png", png)})
        assert r.status_code == 413 and "above the budget" in r.json()["detail"]
        assert "/proc/" not in r.text

        def ct(p):
            raise UnsupportedModalityError(p, "modality CT is not ultrasound")

        monkeypatch.setattr(imaging, "read_image", ct)
        r = c.post("/api/predict", files={"image": ("a.png", png)})
        assert r.status_code == 422 and "modality CT" in r.json()["detail"]


def test_burned_in_warning_reaches_json_preview_and_report(png, monkeypatch):
    note = "the pixels may show patient text (test)"
    monkeypatch.setattr(imaging, "burned_in_warning", lambda gray, meta: note)
    with local(create_app(ContrastPredictor())) as c:
        d = c.post("/api/predict", files={"image": ("a.png", png)}).json()
        assert d["warnings"] == [note]
        prev = c.post("/api/preview", files={"image": ("a.png", png)})
        assert json.loads(prev.headers["x-buscad-warnings"]) == [note]
        html = c.post("/api/report", files={"image": ("a.png", png)}).text
        assert f"Warning: {note}" in html
    monkeypatch.undo()
    with local(create_app(ContrastPredictor())) as c:
        assert c.post("/api/predict", files={"image": ("a.png", png)}).json()["warnings"] == []


# ------------------------------------------------------------- bad input


CLINICAL_BOMBS = {
    "5000-digit integer": '{"age": ' + "9" * 5000 + "}",
    "31-digit integer": '{"age": ' + "1" * 31 + "}",
    "deep nesting": '{"a": ' + "[" * 3000 + "]" * 3000 + "}",
    "nested object": '{"a": {"b": 1}}',
    "65 keys": json.dumps({f"k{i}": i for i in range(65)}),
    "NaN": '{"age": NaN}',
    "Infinity": '{"age": Infinity}',
    "1e999": '{"age": 1e999}',
    "long text": json.dumps({"note": "x" * 300}),
    "too long": json.dumps({"note": "x" * 5000}),
    "list": "[1, 2]",
}


@pytest.mark.parametrize("value", CLINICAL_BOMBS.values(), ids=CLINICAL_BOMBS.keys())
def test_clinical_bombs_are_422(png, value):
    with local(create_app(ContrastPredictor())) as c:
        r = c.post("/api/predict", files={"image": ("a.png", png)}, data={"clinical": value})
        assert r.status_code == 422, r.text
        assert r.json()["detail"].startswith("clinical") and "\n" not in r.json()["detail"]
        ok = c.post(
            "/api/predict", files={"image": ("a.png", png)}, data={"clinical": '{"age": 61}'}
        )
        assert ok.status_code == 200


def test_nan_and_huge_json_bodies_are_422(study):
    app = create_app(ContrastPredictor(), study_db=study.db, study_dir=study.db.parent)
    h = {**auth(study.tok["R01"]), "content-type": "application/json"}
    case = study.cases[0]
    with local(app) as c:
        for raw in (
            f'{{"case_id": "{case}", "round": 1, "birads": "3", "confidence": NaN}}',
            f'{{"case_id": "{case}", "round": 1, "birads": "3", "confidence": Infinity}}',
            f'{{"case_id": "{case}", "round": NaN, "birads": "3"}}',
            '{"case_id": "' + "c" * 5000 + '", "round": 1, "birads": "3"}',
            "[" * 5000 + "]" * 5000,
            '{"case_id": 1' + "0" * 5000 + "}",
        ):
            r = c.post("/api/study/readers/R01/reads", content=raw, headers=h)
            assert 400 <= r.status_code < 500, (raw[:40], r.status_code)
            assert isinstance(r.json()["detail"], str) and len(r.text) < 5000
        oh = {**auth(study.org), "content-type": "application/json"}
        for raw in (
            '{"manifest": "m.csv", "washout_days": NaN}',
            '{"manifest": "m.csv", "seed": 1e400}',
        ):
            r = c.post("/api/study", content=raw, headers=oh)
            assert r.status_code == 422, raw
    assert ReaderStudy.open(study.db).reads().empty


# ------------------------------------------------------- browser-facing


def _check_headers(r: httpx.Response) -> None:
    assert r.headers["content-security-policy"].startswith("default-src 'self'")
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    for k, v in SECURITY_HEADERS.items():
        assert r.headers[k] == v, (r.url, k)


def test_security_headers_on_every_response(study, png):
    app = create_app(ContrastPredictor(), study_db=study.db, max_upload_mb=0.01)
    with local(app) as c:
        responses = [
            c.get("/reader"),
            c.get("/", follow_redirects=False),
            c.get("/static/app.js"),
            c.get("/static/favicon.svg"),
            c.get("/favicon.ico"),
            c.get("/docs"),
            c.get("/openapi.json"),
            c.get("/api/health"),
            c.get("/nope"),  # 404
            c.get("/api/study/export.csv"),  # 401
            c.post("/api/predict", files={"image": ("a.png", png * 10)}),  # 413 (middleware)
            c.post("/api/study/readers", json={}, headers=auth(study.org)),  # 422
            c.get("/api/health", headers={"host": "evil.example"}),  # 400 (host middleware)
        ]
    statuses = {r.status_code for r in responses}
    assert {200, 303, 400, 401, 404, 413, 422} <= statuses
    for r in responses:
        _check_headers(r)
    assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP


def test_host_header_is_checked(png):
    app = create_app(ContrastPredictor(), allowed_hosts=["buscad.lan"])
    with local(app) as c:
        for host in ("evil.example", "127.0.0.1.evil.example", "localhost.evil"):
            r = c.get("/api/info", headers={"host": host})
            assert r.status_code == 400, host
        for host in ("127.0.0.1:8000", "localhost", "[::1]:8000", "buscad.lan"):
            assert c.get("/api/health", headers={"host": host}).status_code == 200, host


def test_docs_are_served_from_local_assets():
    with local(create_app(ContrastPredictor())) as c:
        page = c.get("/docs")
        assert page.status_code == 200 and "swagger-ui" in page.text
        refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert refs and all(u.startswith("/") and not u.startswith("//") for u in refs)
        assert "<script>" not in page.text  # no inline script (CSP)
        for u in refs:
            assert c.get(u).status_code == 200, u
        assert "'unsafe-inline'" in page.headers["content-security-policy"]  # styles only
        assert c.get("/openapi.json").json()["info"]["title"] == "buscad"


def test_pages_have_no_inline_script_or_style():
    from buscad.serve.app import STATIC_DIR

    for page in STATIC_DIR.glob("*.html"):
        html = page.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), page.name
        assert " style=" not in html and "<style" not in html, page.name
        assert not re.search(r"\son[a-z]+=", html), page.name  # no inline handlers


def test_serve_command_prints_organiser_token_once(monkeypatch, tmp_path):
    import uvicorn
    from typer.testing import CliRunner

    import buscad.serve.cli as serve_cli
    from buscad.cli import app as cli_app

    seen: dict = {}
    monkeypatch.setattr(serve_cli, "load_predictor", lambda p: ContrastPredictor())
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    db = tmp_path / "s.sqlite"
    args = ["serve", str(tmp_path), "--study-db", str(db), "--allowed-host", "buscad.lan"]
    r = CliRunner().invoke(cli_app, args)
    assert r.exit_code == 0, r.output
    tok = re.search(r"organiser token \(shown once\): (\S+)", r.output).group(1)
    assert ReaderStudy.prepare(db).authenticate(tok).is_organiser
    assert "open case screen is off" in r.output
    with TestClient(seen["app"], base_url="http://buscad.lan") as c:
        assert c.get("/api/info").json()["case_screen"] is False
        assert c.get("/api/study", headers=auth(tok)).json()["role"] == "organiser"
    r = CliRunner().invoke(cli_app, args)
    assert "organiser token" not in r.output  # not again: `buscad reader organiser-token` rotates


def test_reader_cli_tokens(tmp_path, cohort):
    from typer.testing import CliRunner

    from buscad.cli import app as cli_app

    db = tmp_path / "s.sqlite"
    run = CliRunner().invoke
    r = run(
        cli_app, ["reader", "create", str(db), "-m", str(cohort.source), "--readers", "R01,R02"]
    )
    assert r.exit_code == 0, r.output
    org = re.search(r"organiser token: (\S+)", r.output).group(1)
    links = dict(re.findall(r"reader (R0\d): \S+/reader#token=(\S+)", r.output))
    st = ReaderStudy.open(db)
    assert st.authenticate(org).is_organiser
    assert {k: st.authenticate(v).reader_id for k, v in links.items()} == {
        "R01": "R01",
        "R02": "R02",
    }
    r = run(cli_app, ["reader", "token", str(db), "--reader", "R03"])
    new = re.search(r"#token=(\S+)", r.output).group(1)
    assert st.authenticate(new).reader_id == "R03" and "R03" in st.readers()
    assert run(cli_app, ["reader", "revoke", str(db), "--reader", "R01"]).exit_code == 0
    assert st.authenticate(links["R01"]) is None
    r = run(cli_app, ["reader", "organiser-token", str(db)])
    assert st.authenticate(org) is None
    assert st.authenticate(re.search(r"organiser token: (\S+)", r.output).group(1)).is_organiser


def test_fuzz_campaign_gets_no_5xx():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from fuzz_web import run_web_campaign

    res = run_web_campaign(60, seed=1)
    assert res["n_5xx"] == 0, res["first_5xx"]
    assert res["alive_at_end"] and res["n_no_answer"] == 0
    assert sum(res["status_counts"].values()) == 60
    assert set(res["status_counts"]) - {"200"}  # malformed input was refused, not all accepted
