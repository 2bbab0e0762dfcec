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

from buscad.errors import ModelFileError
from buscad.portable import load_portable, save_portable


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
