"""Pickle-free sklearn export: NumPy forward pass equals scikit-learn's."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.datasets import make_classification
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC, LinearSVC

from buscad.bundle.portable import load_portable, save_portable
from buscad.errors import ModelFileError


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(n_samples=160, n_features=8, n_informative=4, random_state=0)
    X[::7, 2] = np.nan
    return X, y


@pytest.mark.parametrize(
    "make",
    [
        lambda: make_pipeline(
            SimpleImputer(add_indicator=True), StandardScaler(), LogisticRegression(C=0.5)
        ),
        lambda: make_pipeline(
            SimpleImputer(), StandardScaler(), SVC(probability=True, random_state=0)
        ),
        lambda: make_pipeline(
            SimpleImputer(),
            StandardScaler(),
            SVC(kernel="linear", probability=True, random_state=0),
        ),
        lambda: make_pipeline(
            SimpleImputer(strategy="median"),
            SVC(kernel="poly", degree=2, probability=True, random_state=0),
        ),
        lambda: make_pipeline(
            SimpleImputer(),
            StandardScaler(),
            CalibratedClassifierCV(SVC(), method="sigmoid", ensemble=False),
        ),
        lambda: CalibratedClassifierCV(
            make_pipeline(SimpleImputer(), StandardScaler(), LinearSVC()),
            method="sigmoid",
            ensemble=False,
        ),
    ],
)
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_numeric_pipelines_match(tmp_path, data, make):
    X, y = data
    est = make().fit(X, y)
    save_portable(est, tmp_path / "m", metadata={"features": 8})
    pm = load_portable(tmp_path / "m")
    np.testing.assert_allclose(pm.predict_proba(X), est.predict_proba(X), atol=1e-9)
    assert pm.metadata == {"features": 8}


def test_mixed_columns_with_onehot(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "age": rng.normal(50, 10, 120),
            "shape": rng.choice(["oval", "round", "irregular"], 120),
            "margin": rng.choice(["circumscribed", "spiculated", None], 120),
        }
    )
    y = ((df["shape"] == "irregular") | (df["age"] > 55)).astype(int)
    df.loc[::9, "age"] = np.nan
    ct = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(add_indicator=True), StandardScaler()), ["age"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["shape", "margin"]),
        ]
    )
    est = make_pipeline(ct, LogisticRegression()).fit(df, y)
    save_portable(est, tmp_path / "mix")
    pm = load_portable(tmp_path / "mix.json")
    test = df.copy()
    test.loc[0, "shape"] = (
        "lobulated"  # unseen category: all-zero one-hot, like handle_unknown="ignore"
    )
    np.testing.assert_allclose(pm.predict_proba(test), est.predict_proba(test), atol=1e-9)


def test_files_are_json_and_safetensors_only(tmp_path, data):
    X, y = data
    est = make_pipeline(SimpleImputer(), LogisticRegression()).fit(X, y)
    st, js = save_portable(est, tmp_path / "m")
    doc = json.loads(js.read_text())
    assert doc["format"] == "buscad-portable-sklearn" and doc["model"]["type"] == "pipeline"
    assert st.read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle stream


def test_errors(tmp_path, data):
    from sklearn.ensemble import RandomForestClassifier

    X, y = data
    with pytest.raises(ModelFileError, match="cannot export RandomForestClassifier"):
        save_portable(
            make_pipeline(SimpleImputer(), RandomForestClassifier(n_estimators=3)).fit(X, y),
            tmp_path / "rf",
        )
    with pytest.raises(ModelFileError, match=r"nothing\.json: model file not found"):
        load_portable(tmp_path / "nothing")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad.safetensors").write_bytes(b"x")
    with pytest.raises(ModelFileError, match=r"bad\.json: not valid JSON"):
        load_portable(tmp_path / "bad")


# ------------------------------------------------------- buscad's classical models
def _study_table(n: int = 140, seed: int = 3) -> tuple[pd.DataFrame, np.ndarray]:
    """A study-like table: radiomics (3 views), deep features, clinical and lexicon columns."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    cols: dict[str, object] = {"image_path": [f"img{i}.png" for i in range(n)]}
    for j in range(8):
        base = rng.normal(3 + j, 1 + j / 4, n) + y * (j < 3)
        cols[f"original_firstorder_F{j}"] = base
        cols[f"original_firstorder_F{j}@erode2"] = base + rng.normal(0, 0.05, n)
        cols[f"original_firstorder_F{j}@dilate2"] = base + rng.normal(0, 0.05, n)
    for j in range(16):
        cols[f"deep_{j:04d}"] = rng.normal(0, 1, n) + 0.8 * y * (j < 4)
    age = rng.normal(50, 10, n) + 8 * y
    age[rng.random(n) < 0.1] = np.nan
    cols["age"] = age
    cols["symptoms"] = np.where(rng.random(n) < 0.5 + 0.3 * (y - 0.5), "lump", "screening")
    cols["shape"] = np.where(y == 1, "irregular", "oval")
    cols["shape"][rng.random(n) < 0.2] = "round"
    cols["margin"] = np.where(
        y == 1, "not circumscribed - angular&indistinct", "circumscribed"
    ).astype(object)
    cols["margin"][rng.random(n) < 0.1] = None
    cols["_deep_score"] = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, n), 0, 1)
    return pd.DataFrame(cols), y


def _classical_models():
    from buscad import classical as C

    clin = dict(numeric=["age"], categorical=["symptoms"], alpha=0.5)
    bases = [
        ("radiomics", C.radiomics_pipeline(lasso_cv=3)),
        ("dlr", C.DLR(include=r"^deep_\d+$")),
        ("us", C.USModel(columns=["shape", "margin"])),
        ("deep", C.ColumnScore("_deep_score")),
    ]
    return {
        "radiomics": C.radiomics_pipeline(lasso_cv=3),
        "dlr": C.DLR(include=r"^deep_\d+$"),
        "clinical": C.ClinicalModel(**clin),
        "clinical_prior": C.ClinicalModel(numeric=["age"], alpha=0.5),
        "us": C.USModel(columns=["shape", "margin"]),
        "cldlr": C.CLDLR(include=r"^deep_\d+$", **clin),
        "integrated": C.StackingIntegrator(bases, cv=3, stack_method="logit"),
    }


@pytest.mark.parametrize("name", list(_classical_models()))
def test_classical_models_round_trip(tmp_path, name):
    """Every model a study builds is exported without pickles and predicts identically."""
    X, y = _study_table()
    Xtr, Xte = X.iloc[:100], X.iloc[100:].copy()
    if name == "clinical_prior":  # no age in training: the prior-only fallback
        Xtr = Xtr.assign(age=np.nan)
    est = _classical_models()[name].fit(Xtr, y[:100])
    from buscad.classical.inputs import model_inputs

    used = model_inputs(est)
    expect = {
        "radiomics": lambda u: u and all(c.startswith("original_firstorder_F") for c in u),
        "dlr": lambda u: u == [f"deep_{j:04d}" for j in range(16)],
        "clinical": lambda u: u and set(u) <= {"age", "symptoms"},
        "clinical_prior": lambda u: u == [],
        "us": lambda u: u == ["shape", "margin"],
        "cldlr": lambda u: u[-16:] == [f"deep_{j:04d}" for j in range(16)],
        "integrated": lambda u: {"_deep_score", "shape", "margin", "deep_0000"} <= set(u),
    }[name]
    assert expect(used), used
    assert not any("@" in c for c in used)  # perturbed-mask views are for the ICC filter only
    save_portable(est, tmp_path / name)
    m = load_portable(tmp_path / name)
    ref = est.predict_proba(Xte)[:, 1]
    if name != "clinical_prior":
        assert ref.std() > 0.01  # a real model, not a constant
    np.testing.assert_allclose(m.predict_proba(Xte)[:, 1], ref, atol=1e-9, rtol=0)
    # one row with unseen categories and missing values, as a bundle builds it
    row = Xte.iloc[:1].copy()
    row["symptoms"], row["shape"], row["age"] = "unheard-of", "lobulated", np.nan
    np.testing.assert_allclose(
        m.predict_proba(row)[:, 1], est.predict_proba(row)[:, 1], atol=1e-9, rtol=0
    )
    # columns the model never used may be absent from the table given to the portable model
    got = m.predict_proba(row.drop(columns=["image_path", "original_firstorder_F7@dilate2"]))[:, 1]
    np.testing.assert_allclose(got, est.predict_proba(row)[:, 1], atol=1e-9, rtol=0)
