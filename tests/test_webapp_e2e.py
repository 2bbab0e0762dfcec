"""End-to-end test of the web app in a real headless Chromium (Debian's package, via Playwright).

Set-up: the ``browser`` fixture of ``tests/conftest.py`` (``/usr/bin/chromium``,
Debian's package, which ``.ci/run`` installs when it is missing); without it the
tests are skipped with the reason, or fail under ``CI=true``. Playwright's own
browser download is never used.

Screenshots of the main screens (phantom images only) go to
``$BUSCAD_SCREENSHOT_DIR`` when set (``docs/img`` for the README), else to a
temporary folder. ``$BUSCAD_SCREENSHOT_BUNDLE`` serves a real model bundle
instead of the test predictor (the README's screenshots use the bundle that
``make demo`` trains on phantoms)::

    BUSCAD_SCREENSHOT_DIR=docs/img BUSCAD_SCREENSHOT_BUNDLE=runs/demo/study/bundle \
        .venv/bin/python -m pytest tests/test_webapp_e2e.py
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from tests.render import live_server

from buscad.data.phantom import generate_cohort
from buscad.reader.store import ReaderStudy
from buscad.serve.app import create_app
from serve_predictor import ContrastPredictor

#: The study tokens of the module's server (the reader R07's and the organiser's).
_TOKENS: dict[str, str] = {}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    return generate_cohort(3, tmp_path_factory.mktemp("e2e"), seed=21, normal_fraction=0.0)


@pytest.fixture(scope="module")
def server(cohort, tmp_path_factory: pytest.TempPathFactory):
    db = tmp_path_factory.mktemp("e2e_db") / "study.sqlite"
    st = ReaderStudy.create(db, cohort.source, washout_days=0, seed=4)
    st.add_reader("R07")
    tokens = {"R07": st.issue_reader_token("R07"), "organiser": st.issue_organiser_token()}
    bundle = os.environ.get("BUSCAD_SCREENSHOT_BUNDLE")
    if bundle:
        from buscad.bundle.bundle import Bundle

        predictor = Bundle.load(bundle)
    else:
        predictor = ContrastPredictor()
    app = create_app(predictor, study_db=db, open_case_screen=True)
    with live_server(app) as url:
        _TOKENS.update(tokens)
        yield url, predictor


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = os.environ.get("BUSCAD_SCREENSHOT_DIR")
    out = Path(d) if d else tmp_path_factory.mktemp("shots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _server_tokens() -> dict[str, str]:
    return _TOKENS


def _shot(page, path: Path) -> None:
    """Screenshot as a small palette PNG (phantom images only)."""
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    assert path.stat().st_size > 10_000


def _page(browser, base):
    page = browser.new_page(viewport={"width": 1280, "height": 760})
    outside: list[str] = []
    page.on(
        "request",
        lambda req: (
            None
            if req.url.startswith((base, "data:", "blob:", "about:"))
            else outside.append(req.url)
        ),
    )
    return page, outside


def _as_organiser(page, base: str) -> None:
    """Enter the organiser's token on /reader, as the organiser does before using the case
    screen while a study is served (the token stays in the tab's sessionStorage)."""
    page.goto(base + "/reader")
    page.click("#organiser summary")
    page.fill("#org-token", _server_tokens()["organiser"])
    page.click("#org-unlock")
    page.wait_for_selector("#org-panel:not([hidden])")


def test_case_screen_refuses_without_the_organiser_token(browser, server, cohort):
    server, predictor = server
    page, outside = _page(browser, server)
    page.goto(server + "/")
    page.wait_for_selector(f"#model-line:has-text('{predictor.name}')")
    page.set_input_files("#image-input", str(cohort.image_path(0)))
    page.wait_for_selector("text=needs the organiser's token")
    assert page.is_disabled("#analyse")
    assert outside == []
    page.close()


def test_case_screen(browser, server, cohort, shots):
    server, predictor = server
    page, outside = _page(browser, server)
    _as_organiser(page, server)
    page.goto(server + "/")
    page.wait_for_selector(f"#model-line:has-text('{predictor.name}')")
    page.set_input_files("#image-input", str(cohort.image_path(0)))
    page.wait_for_selector("#analyse:enabled")
    # no box: the page says the whole image is used
    page.click("#analyse")
    page.wait_for_selector("#roi-note:visible")
    assert "whole image" in page.inner_text("#roi-note")
    # draw a box on the image
    page.evaluate("window.scrollTo(0, 0)")  # the first result may have scrolled the page
    bb = page.locator("#draw").bounding_box()
    assert bb and bb["width"] > 100
    page.mouse.move(bb["x"] + bb["width"] * 0.25, bb["y"] + bb["height"] * 0.25)
    page.mouse.down()
    page.mouse.move(bb["x"] + bb["width"] * 0.6, bb["y"] + bb["height"] * 0.5, steps=5)
    page.mouse.move(bb["x"] + bb["width"] * 0.75, bb["y"] + bb["height"] * 0.75, steps=5)
    page.mouse.up()
    assert page.inner_text("#box-text").startswith("Box: ")
    for name in predictor.clinical_inputs:  # the phantom's own clinical and lexicon values
        if name in cohort.df and cohort.df[name].notna().iat[0]:
            field = f"#clinical-{name}"
            value = str(cohort.df[name].iat[0])
            if page.evaluate(f"document.querySelector('{field}').tagName") == "SELECT":
                # a lexicon input offers the values the models learnt, under a plain label
                options = page.eval_on_selector_all(f"{field} option", "os => os.map(o => o.value)")
                if value in options:
                    page.select_option(field, value)
            else:
                page.fill(field, value)
    page.click("#analyse")
    page.wait_for_selector("#message.ok")
    assert page.locator("#roi-note").is_hidden()
    score = page.inner_text("#score")
    assert score.endswith("%") and 0 <= float(score[:-1]) <= 100
    assert page.inner_text("#band").split(" (")[0] in ("3", "4A", "4B", "4C", "5")
    assert "Decision support only" in page.inner_text("#band-note")
    # one headline; the other models collapsed under one sentence
    assert page.inner_text("#assessment").startswith("AI assessment by the ")
    assert page.locator("#models").is_hidden()
    page.click("#others-text")
    assert "(gives the AI assessment)" in page.inner_text("#models")
    # plain model names, the short name as the tooltip; one wording of the call and the band
    assert page.get_attribute("#models tbody tr td", "title") in predictor.model_names
    assert page.inner_text("#decision").startswith("AI call: ")
    assert "(primary)" not in page.inner_text("#models")
    heat = page.locator("#heat-img")
    assert heat.is_visible()
    w = page.evaluate("document.getElementById('heat-img').naturalWidth")
    assert w == 256  # phantom width: the heatmap is in full-image coordinates
    page.locator("#opacity").fill("80")
    assert page.evaluate("document.getElementById('heat-img').style.opacity") == "0.8"
    page.evaluate("window.scrollTo(0, 0)")  # choosing a lexicon value may have scrolled
    _shot(page, shots / "app-case.png")
    # the report downloads as a file
    with page.expect_download() as dl:
        page.click("#save-html")
    assert dl.value.suggested_filename.startswith("buscad-report-")
    assert outside == []  # every asset is served locally
    page.close()


def test_dicom_shown_deidentified_and_clinical_input(browser, server, cohort, tmp_path):
    from buscad.data.io import read_image
    from serve_predictor import DATES, PATIENT_ID, PATIENT_NAME, make_dicom

    gray, _ = read_image(cohort.image_path(1))
    dcm = tmp_path / "Doe_Janeqx.dcm"
    dcm.write_bytes(make_dicom(gray))
    server, predictor = server
    page, outside = _page(browser, server)
    _as_organiser(page, server)
    page.goto(server + "/")
    with_age = "age" in predictor.clinical_inputs
    page.wait_for_selector(
        "#clinical-age" if with_age else f"#model-line:has-text('{predictor.name}')"
    )
    page.set_input_files("#image-input", str(dcm))
    page.wait_for_selector("#analyse:enabled")
    assert page.evaluate("document.getElementById('base-img').naturalWidth") == gray.shape[1]
    if with_age:
        page.fill("#clinical-age", "61")
    page.click("#analyse")
    page.wait_for_selector("#message.ok")
    if with_age:  # the clinical model ran with the age
        page.click("#others-text")
        rows = page.inner_text("#models").splitlines()
        clinical_row = [r for r in rows if r.startswith("Clinical model")]
        assert clinical_row and "not run" not in clinical_row[0]
    text = page.inner_text("main")
    for secret in (PATIENT_NAME, "Janeqx", PATIENT_ID, *DATES):
        assert secret not in text
    assert "Doe_Janeqx.dcm" not in page.inner_text("#results")
    assert outside == []
    page.close()


def test_bad_file_shows_message(browser, server, tmp_path):
    server, _ = server
    page, _ = _page(browser, server)
    _as_organiser(page, server)
    page.goto(server + "/")
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    page.set_input_files("#image-input", str(fake))
    page.wait_for_selector("#message.error")
    assert "not a recognised image" in page.inner_text("#message")
    assert page.locator("#analyse").is_disabled()
    page.close()


def test_reader_screens(browser, server, shots):
    server, _ = server
    tok = _server_tokens()
    h = {"Authorization": f"Bearer {tok['R07']}"}
    page, outside = _page(browser, server)
    page.goto(server + "/reader#token=" + tok["R07"])  # the reader's personal link
    page.wait_for_selector("#read-form:visible")
    assert "#token" not in page.url  # the token leaves the address bar at once
    assert page.inner_text("#session") == "Reader R07."
    assert page.inner_text("#round") == "Round 1: without AI"
    assert page.locator("#ai-panel").is_hidden()
    assert page.locator("#opacity-row").is_hidden() and page.locator("#heat-img").is_hidden()
    # no AI before the washout: not even the outline of the region the AI reads
    assert page.locator("#outline-row").is_hidden() and page.locator("#outline-svg").is_hidden()
    assert page.evaluate("document.querySelectorAll('#outline-svg polygon').length") == 0
    _shot(page, shots / "reader-round1.png")
    page.check("input[name=birads][value='4a']")
    page.check("#give-confidence")
    page.click("#submit")
    page.wait_for_selector("#position:has-text('Case 2 of 3')")
    # finish round 1 through the API (washout 0: round 2 opens at once)
    for _ in range(2):
        case = httpx.get(f"{server}/api/study/readers/R07/next", headers=h).json()["case"]
        httpx.post(
            f"{server}/api/study/readers/R07/reads",
            json={"case_id": case["case_id"], "round": 1, "birads": "3"},
            headers=h,
        ).raise_for_status()
    page.reload()  # resume: the token is kept in this tab's sessionStorage
    page.wait_for_selector("#ai-panel:visible")
    assert page.inner_text("#round") == "Round 2: with AI"
    assert page.inner_text("#score").endswith("%")
    # the same headline words as the case screen: "AI assessment by the <model>: ..."
    assert page.inner_text("#threshold").startswith("AI assessment by the ")
    assert "calibrated probability" not in page.inner_text("#ai-panel")
    page.wait_for_function("document.getElementById('heat-img').naturalWidth > 0")
    # round 2 draws the region the AI read (the case's mask) over the image; it can be hidden
    assert page.locator("#outline-svg").is_visible()
    assert page.evaluate("document.querySelectorAll('#outline-svg polygon').length") >= 1
    assert "Region read: the lesion mask given with the image" in page.inner_text("#outline-text")
    page.uncheck("#show-outline")
    assert page.locator("#outline-svg").is_hidden()
    page.check("#show-outline")
    page.locator("details#organiser").evaluate("d => d.open = true")
    _shot(page, shots / "reader-round2.png")
    org = {"Authorization": f"Bearer {tok['organiser']}"}
    csv = httpx.get(f"{server}/api/study/export.csv", headers=org).text.splitlines()
    first = next(line for line in csv if ",R07," in line).split(",")
    assert first[5:7] == ["4a", "50.0"]  # BI-RADS and confidence from the browser
    assert float(first[8]) > 0  # time taken
    assert outside == []
    page.close()


def test_new_case_starts_from_a_clean_slate(browser, server, cohort, tmp_path):
    """Case A with a mask and an age, then case B: B's request carries nothing of A.

    The predictor is spied on in the server (Playwright does not expose multipart
    bodies with files), so the check is what the model really received.
    """
    server, predictor = server
    page, outside = _page(browser, server)
    seen: list[dict] = []
    orig = predictor.predict

    def spy(gray, mask=None, box=None, clinical=None, heatmap=True):
        seen.append({"mask": mask is not None, "box": box, "clinical": clinical})
        return orig(gray, mask=mask, box=box, clinical=clinical, heatmap=heatmap)

    predictor.predict = spy
    try:
        _as_organiser(page, server)
        page.goto(server + "/")
        page.wait_for_selector(f"#model-line:has-text('{predictor.name}')")
        page.set_input_files("#image-input", str(cohort.image_path(0)))
        page.wait_for_selector("#analyse:enabled")
        page.set_input_files("#mask-input", str(cohort.mask_paths(0)[0]))
        page.wait_for_selector("#message:has-text('Mask outlined')")
        # the mask's outline is drawn on the canvas
        drawn = page.evaluate(
            "(() => { const c = document.getElementById('draw');"
            " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; })()"
        )
        assert drawn > 20
        with_age = "age" in predictor.clinical_inputs
        if with_age:
            page.fill("#clinical-age", "77")
        page.click("#analyse")
        page.wait_for_selector("#message.ok")
        assert seen[-1]["mask"] is True
        assert (seen[-1]["clinical"] == {"age": 77}) == with_age
        # case B: another image, of another size
        from PIL import Image

        b = tmp_path / "case_b.png"
        Image.open(cohort.image_path(1)).resize((200, 150)).save(b)
        page.set_input_files("#image-input", str(b))
        page.wait_for_selector("#analyse:enabled")
        assert page.input_value("#mask-input") == ""
        if with_age:
            assert page.input_value("#clinical-age") == ""
        assert page.locator("#results").is_hidden()
        n = len(seen)
        page.click("#analyse")
        page.wait_for_selector("#message.ok")
        assert len(seen) == n + 1
        assert seen[-1] == {"mask": False, "box": None, "clinical": None}  # nothing of case A
        assert "whole image" in page.inner_text("#roi-note")
        assert outside == []
    finally:
        predictor.predict = orig
        page.close()


def test_api_docs_render_offline(browser, server):
    """/docs renders every operation from local Swagger UI files, with no CSP error."""
    server, _ = server
    page, outside = _page(browser, server)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(server + "/docs")
    page.wait_for_selector(".opblock")
    n_ops = sum(len(v) for v in httpx.get(server + "/openapi.json").json()["paths"].values())
    assert page.locator(".opblock").count() == n_ops
    assert errors == [] and outside == []
    page.close()
