"""Pickle-free persistence of fitted scikit-learn models: safetensors + JSON.

``save_portable(estimator, stem)`` writes ``stem.safetensors`` (every fitted
array) and ``stem.json`` (the structure: step types, parameters, array names).
``load_portable(stem)`` returns a :class:`PortableModel` that re-implements the
forward pass in NumPy, so loading a model never unpickles and never imports
user code: a model file cannot execute anything.

Supported building blocks (what buscad's classical models are made of):
``Pipeline``, ``StandardScaler``, ``SimpleImputer`` (with or without missing
indicator), ``OneHotEncoder`` (dense, ``handle_unknown="ignore"``),
``ColumnTransformer`` (integer or name column selections, ``drop``/``passthrough``
remainder), ``LogisticRegression`` (binary), ``SVC`` (binary, ``linear``/``rbf``/
``poly``/``sigmoid`` kernels, libsvm's Platt probabilities) and
``CalibratedClassifierCV(method="sigmoid", ensemble=False)`` around an SVC,
``LinearSVC`` or logistic regression (the non-deprecated way to get SVM
probabilities since scikit-learn 1.9), and any feature selector (``SelectorMixin``:
its kept columns). Any estimator may opt in by implementing
``to_portable() -> (spec, arrays)``; the spec's ``"type"`` must then be one of the
types below, and fitted estimators inside the spec (as a value, or in a list or
a dict of a list) are exported in place. buscad's classical models do so
(:mod:`buscad.classical`): ``frame`` (reorder a table's named columns, absent
ones missing), ``select_names``, ``tostr``, ``lexicon`` (BI-RADS descriptor
indicators), ``constant`` (a prior), ``column`` (a score computed elsewhere) and
``stack`` (the integrated model).

The forward formulas:

- StandardScaler: ``z = (x - mean) / scale``
- SimpleImputer: ``x[isnan(x)] = statistics`` (column-wise), optional indicator columns appended
- LogisticRegression: ``p = 1 / (1 + exp(-(x · coef + intercept)))``
- SVC decision: ``f(x) = Σ_i dual_coef_i K(sv_i, x) + intercept`` with
  ``K = x·y`` (linear), ``exp(-γ |x - y|²)`` (rbf), ``(γ x·y + c0)^d`` (poly),
  ``tanh(γ x·y + c0)`` (sigmoid); libsvm Platt: ``r = 1/(1 + exp(-A f + B))`` then
  libsvm's pairwise coupling (see :func:`_libsvm_binary_proba`);
  CalibratedClassifierCV: ``P(malignant) = 1 / (1 + exp(a f + b))``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from buscad.errors import ModelFileError
from buscad.utils import atomic_path, atomic_write_json, load_versioned_json

FORMAT = "buscad-portable-sklearn"
VERSION = 1
#: Versions :func:`load_portable` reads.
SUPPORTED_VERSIONS = (1,)


class _Builder:
    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self._n = 0

    def add(self, arr: Any) -> str:
        name = f"a{self._n}"
        self._n += 1
        self.arrays[name] = np.ascontiguousarray(np.asarray(arr, dtype=np.float64))
        return name

    def export(self, est: Any) -> dict:
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler
        from sklearn.svm import SVC

        if hasattr(est, "to_portable"):
            spec, arrays = est.to_portable()
            spec = self._nested(dict(spec))
            for key, arr in arrays.items():
                spec[key] = self.add(arr)
            return spec
        if isinstance(est, Pipeline):
            spec = {
                "type": "pipeline",
                "steps": [self.export(s) for _, s in est.steps if s != "passthrough"],
            }
            names = _names_in(est)
            # fitted on a named table: columns are found by name, so a table with other or
            # fewer columns (absent ones missing) gives the same result
            return {"type": "frame", "columns": names, "inner": spec} if names else spec
        if isinstance(est, StandardScaler):
            n = len(est.mean_) if est.mean_ is not None else est.n_features_in_
            mean = est.mean_ if est.with_mean else np.zeros(n)
            scale = est.scale_ if est.with_std else np.ones(n)
            return {"type": "scaler", "mean": self.add(mean), "scale": self.add(scale)}
        from sklearn.feature_selection import SelectorMixin

        if isinstance(est, SelectorMixin):
            return {"type": "select", "index": self.add(est.get_support(indices=True))}
        if isinstance(est, SimpleImputer) and np.asarray(est.statistics_).dtype == object:
            if est.indicator_ is not None:
                raise ModelFileError("<estimator>", "categorical imputer with indicator")
            return {
                "type": "fill",
                "values": [_json_scalar(v) for v in np.asarray(est.statistics_).tolist()],
            }
        if isinstance(est, SimpleImputer):
            ind = None
            if est.indicator_ is not None:
                ind = self.add(est.indicator_.features_)
            return {"type": "imputer", "statistics": self.add(est.statistics_), "indicator": ind}
        if isinstance(est, OneHotEncoder):
            if est.drop is not None:
                raise ModelFileError(
                    "<estimator>", "OneHotEncoder with drop= is not supported for export"
                )
            return {
                "type": "onehot",
                "categories": [[_json_scalar(c) for c in cats] for cats in est.categories_],
            }
        if isinstance(est, ColumnTransformer):
            parts = []
            for name, trans, cols in est.transformers_:
                if trans == "drop":
                    continue
                idx = _column_indices(est, cols)
                inner = {"type": "identity"} if trans == "passthrough" else self.export(trans)
                parts.append({"name": name, "columns": idx, "inner": inner})
            return {"type": "columns", "parts": parts, "feature_names_in": _names_in(est)}
        if isinstance(est, LogisticRegression):
            if len(est.classes_) != 2:
                raise ModelFileError(
                    "<estimator>", "only binary LogisticRegression can be exported"
                )
            return {
                "type": "logistic",
                "coef": self.add(est.coef_[0]),
                "intercept": float(est.intercept_[0]),
                "classes": [_json_scalar(c) for c in est.classes_],
            }
        if isinstance(est, CalibratedClassifierCV):
            if len(est.calibrated_classifiers_) != 1 or est.method != "sigmoid":
                raise ModelFileError(
                    "<estimator>",
                    "only CalibratedClassifierCV(method='sigmoid', ensemble=False) can be exported",
                )
            cc = est.calibrated_classifiers_[0]
            cal = cc.calibrators[0]
            return {
                "type": "calibrated",
                "inner": self._decision(cc.estimator),
                "a": float(cal.a_),
                "b": float(cal.b_),
                "classes": [_json_scalar(c) for c in est.classes_],
            }
        if isinstance(est, SVC):
            if not est.probability:
                raise ModelFileError(
                    "<estimator>", "SVC without probabilities: wrap it in CalibratedClassifierCV"
                )
            spec = self._decision(est)
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # probA_ deprecated in sklearn 1.9
                spec["prob_a"], spec["prob_b"] = float(est.probA_[0]), float(est.probB_[0])
            return spec
        raise ModelFileError(
            "<estimator>", f"cannot export {type(est).__name__}: not a supported building block"
        )

    def _nested(self, spec: Any) -> Any:
        """Export fitted estimators found in a ``to_portable`` spec (values, lists, dicts)."""
        if isinstance(spec, dict):
            return {k: self._nested(v) for k, v in spec.items()}
        if isinstance(spec, (list, tuple)):
            return [self._nested(v) for v in spec]
        if hasattr(spec, "fit"):
            return self.export(spec)
        return spec

    def _decision(self, est: Any) -> dict:
        """Export the decision function of a binary SVC, LinearSVC or logistic model."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.svm import SVC, LinearSVC

        if isinstance(est, Pipeline):
            steps = [self.export(s) for _, s in est.steps[:-1] if s != "passthrough"]
            return {"type": "pipeline", "steps": [*steps, self._decision(est.steps[-1][1])]}
        if len(getattr(est, "classes_", [0, 1])) != 2:
            raise ModelFileError("<estimator>", f"only binary {type(est).__name__} can be exported")
        if isinstance(est, (LinearSVC, LogisticRegression)):
            return {
                "type": "linear",
                "coef": self.add(est.coef_[0]),
                "intercept": float(est.intercept_[0]),
            }
        if isinstance(est, SVC):
            return {
                "type": "svc",
                "kernel": est.kernel,
                "gamma": float(est._gamma),
                "coef0": float(est.coef0),
                "degree": int(est.degree),
                "support_vectors": self.add(est.support_vectors_),
                "dual_coef": self.add(est.dual_coef_[0]),
                "intercept": float(est.intercept_[0]),
                "classes": [_json_scalar(c) for c in est.classes_],
            }
        raise ModelFileError(
            "<estimator>", f"cannot export the decision function of {type(est).__name__}"
        )


def _json_scalar(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and np.isnan(v):
        return None
    return v


def _names_in(est: Any) -> list[str] | None:
    names = getattr(est, "feature_names_in_", None)
    return [str(n) for n in names] if names is not None else None


def _column_indices(ct: Any, cols: Any) -> list[int]:
    if isinstance(cols, slice):
        return list(range(ct.n_features_in_))[cols]
    cols = list(np.atleast_1d(cols))
    if cols and isinstance(cols[0], (bool, np.bool_)):
        return [i for i, c in enumerate(cols) if c]
    if cols and isinstance(cols[0], str):
        names = list(ct.feature_names_in_)
        return [names.index(c) for c in cols]
    return [int(c) for c in cols]


def save_portable(
    estimator: Any, stem: str | os.PathLike[str], metadata: dict | None = None
) -> tuple[Path, Path]:
    """Write a fitted estimator as ``stem.safetensors`` + ``stem.json``.

    Parameters
    ----------
    estimator : fitted scikit-learn estimator
        Built from the supported building blocks (see module docstring).
    stem : path-like
        Output path without suffix.
    metadata : dict, optional
        Stored in the JSON under ``"metadata"`` (feature names, provenance...).

    Returns
    -------
    tuple of Path
        The two files written.
    """
    from safetensors.numpy import save_file

    b = _Builder()
    spec = b.export(estimator)
    stem = Path(stem)
    st_path = stem.with_suffix(".safetensors")
    js_path = stem.with_suffix(".json")
    with atomic_path(st_path) as tmp:
        save_file(b.arrays or {"_empty": np.zeros(1)}, str(tmp))
    atomic_write_json(
        js_path, {"format": FORMAT, "version": VERSION, "model": spec, "metadata": metadata or {}}
    )
    return st_path, js_path


def load_portable(stem: str | os.PathLike[str]) -> PortableModel:
    """Load a model written by :func:`save_portable` (no unpickling).

    Raises
    ------
    ModelFileError
        Missing or corrupt files, or a format this version does not know.
    """
    from safetensors.numpy import load_file

    stem = Path(stem)
    if stem.suffix in (".json", ".safetensors"):
        stem = stem.with_suffix("")
    js_path, st_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    for p in (js_path, st_path):
        if not p.exists():
            raise ModelFileError(p, "model file not found")
    doc = load_versioned_json(js_path, FORMAT, SUPPORTED_VERSIONS, error=ModelFileError)
    try:
        arrays = load_file(str(st_path))
    except Exception as exc:
        raise ModelFileError(st_path, f"cannot read safetensors ({exc})") from exc
    return PortableModel(doc["model"], arrays, doc.get("metadata", {}))


class PortableModel:
    """NumPy forward pass of an exported scikit-learn model.

    Attributes
    ----------
    spec : dict
        The structure read from JSON.
    metadata : dict
        Whatever was stored with the model.
    """

    def __init__(
        self, spec: dict, arrays: dict[str, np.ndarray], metadata: dict | None = None
    ) -> None:
        self.spec = spec
        self.arrays = arrays
        self.metadata = metadata or {}

    def _a(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n, 2)`` (benign, malignant).

        ``X``: a 2-D array, a pandas DataFrame, or a dict of column name ->
        values (a list per column, or one scalar per column for one row); named
        input is matched to the training columns by name.
        """
        p1 = self._run(self.spec, _Table.of(X), final=True)
        p1 = np.asarray(p1, dtype=float).ravel()
        return np.column_stack([1 - p1, p1])

    def transform(self, X: Any) -> np.ndarray:
        """Run a transformer-only model and return its output."""
        return np.asarray(self._run(self.spec, _Table.of(X), final=False), dtype=float)

    def _run(self, spec: dict, X: Any, final: bool) -> Any:
        t = spec["type"]
        if t == "pipeline":
            out = X
            steps = spec["steps"]
            for k, s in enumerate(steps):
                out = self._run(s, out, final=final and k == len(steps) - 1)
            return out
        if t == "identity":
            return _as_float(X)
        if t == "select":
            idx = self._a(spec["index"]).astype(int)
            if isinstance(X, _Table):
                return X.take(idx)
            return np.asarray(X)[:, idx]
        if t == "frame":  # a named table is reordered by name; an array is positional already
            if isinstance(X, _Table) and X.names is not None and spec.get("columns") is not None:
                X = X.reindex(spec["columns"])
            return self._run(spec["inner"], X, final=final)
        if t == "select_names":
            return _Table.of(X).pick(spec["names"])
        if t == "tostr":
            arr = _objects(X)
            return np.array(
                [[v if _is_nan(v) else str(v) for v in row] for row in arr], dtype=object
            ).reshape(arr.shape)
        if t == "fill":
            arr = _objects(X).copy()
            for j, v in enumerate(spec["values"]):
                col = arr[:, j]
                col[[_is_nan(c) for c in col]] = v
            return arr
        if t == "lexicon":
            from buscad.data.lexicon import lexicon_tokens

            tab = _Table.of(X)
            pos = {v: i for i, v in enumerate(spec["vocabulary"])}
            out = np.zeros((tab.n, len(pos)))
            for c in spec["columns"]:
                vals = tab.column(c) if tab.has(c) else [None] * tab.n
                for r, v in enumerate(vals):
                    for tok in lexicon_tokens(v, spec["sep"]):
                        j = pos.get(f"{c}={tok}")
                        if j is not None:
                            out[r, j] = 1.0
            return out
        if t == "constant":
            return np.full(_Table.of(X).n, float(spec["p"]))
        if t == "column":
            col = _as_float(np.asarray(_Table.of(X).column(spec["column"]), dtype=object))
            return np.clip(col.ravel(), 0.0, 1.0)
        if t == "stack":
            base = np.column_stack(
                [
                    np.asarray(self._run(b["model"], X, final=True), dtype=float).ravel()
                    for b in spec["bases"]
                ]
            )
            if spec["transform"] == "logit":
                q = np.clip(base, 1e-6, 1 - 1e-6)
                base = np.log(q / (1 - q))
            z = base @ self._a(spec["coef"]) + spec["intercept"]
            return 1.0 / (1.0 + np.exp(-z))
        if t == "scaler":
            return (_as_float(X) - self._a(spec["mean"])) / self._a(spec["scale"])
        if t == "imputer":
            Xf = _as_float(X).copy()
            stats = self._a(spec["statistics"])
            miss = np.isnan(Xf)
            out = np.where(miss, stats[None, :], Xf)
            if spec.get("indicator"):
                feats = self._a(spec["indicator"]).astype(int)
                out = np.hstack([out, miss[:, feats].astype(float)])
            return out
        if t == "onehot":
            arr = _objects(X)
            cols = []
            for j, cats in enumerate(spec["categories"]):
                col = [None if _is_nan(v) else v for v in arr[:, j]]
                cols.append(
                    np.array([[1.0 if _eq(v, c) else 0.0 for c in cats] for v in col]).reshape(
                        len(col), len(cats)
                    )
                )
            return np.hstack(cols) if cols else np.zeros((len(arr), 0))
        if t == "columns":
            names = spec.get("feature_names_in")
            if isinstance(X, _Table) and X.names is not None and names:
                missing = [n for n in names if not X.has(n)]
                if missing:
                    raise ValueError(f"input lacks column(s) {', '.join(missing)}")
                X = X.pick(names)
            arr = _objects(X)
            outs = [
                np.asarray(self._run(p["inner"], arr[:, p["columns"]], final=False), dtype=float)
                for p in spec["parts"]
            ]
            return np.hstack(outs)
        if t == "linear":
            return _as_float(X) @ self._a(spec["coef"]) + spec["intercept"]
        if t == "logistic":
            z = _as_float(X) @ self._a(spec["coef"]) + spec["intercept"]
            return 1.0 / (1.0 + np.exp(-z))
        if t == "svc":
            Xf = _as_float(X)
            sv = self._a(spec["support_vectors"])
            k = spec["kernel"]
            g, c0, d = spec["gamma"], spec["coef0"], spec["degree"]
            if k == "linear":
                K = Xf @ sv.T
            elif k == "rbf":
                d2 = (Xf**2).sum(1)[:, None] + (sv**2).sum(1)[None, :] - 2 * Xf @ sv.T
                K = np.exp(-g * np.maximum(d2, 0))
            elif k == "poly":
                K = (g * Xf @ sv.T + c0) ** d
            elif k == "sigmoid":
                K = np.tanh(g * Xf @ sv.T + c0)
            else:
                raise ModelFileError("<model>", f"unsupported SVC kernel {k!r}")
            f = K @ self._a(spec["dual_coef"]) + spec["intercept"]
            if "prob_a" not in spec:  # decision function only (inside a calibrator)
                return f
            return _libsvm_binary_proba(f, spec["prob_a"], spec["prob_b"])
        if t == "calibrated":
            f = np.asarray(self._run(spec["inner"], X, final=True), dtype=float).ravel()
            return 1.0 / (1.0 + np.exp(spec["a"] * f + spec["b"]))
        raise ModelFileError("<model>", f"unknown step type {t!r}")


def _libsvm_binary_proba(f: np.ndarray, a: float, b: float) -> np.ndarray:
    """P(second class) exactly as libsvm computes it for two classes.

    libsvm's sigmoid ``r = 1/(1 + exp(A d + B))`` is evaluated on its own
    decision value ``d = -f`` and clipped to ``[1e-7, 1 - 1e-7]``; the pairwise
    coupling (Wu, Lin & Weng 2004, ``multiclass_probability``) then iterates
    from ``p = (1/2, 1/2)`` until ``max_t |(Qp)_t - p'Qp| < 0.005/k``, which for
    two classes stops short of ``p = r`` by up to about 1e-4. Ported line by line.
    """
    out = np.empty(len(f))
    for i, fi in enumerate(np.asarray(f, dtype=float)):
        fapb = -fi * a + b
        r01 = np.exp(-fapb) / (1.0 + np.exp(-fapb)) if fapb >= 0 else 1.0 / (1.0 + np.exp(fapb))
        r01 = min(max(r01, 1e-7), 1 - 1e-7)
        r10 = 1.0 - r01
        q = np.array([[r10 * r10, -r10 * r01], [-r10 * r01, r01 * r01]])
        p = np.array([0.5, 0.5])
        eps = 0.005 / 2
        for _ in range(100):
            qp = q @ p
            pqp = float(p @ qp)
            if np.max(np.abs(qp - pqp)) < eps:
                break
            for t in range(2):
                diff = (-qp[t] + pqp) / q[t, t]
                p[t] += diff
                pqp = (pqp + diff * (diff * q[t, t] + 2 * qp[t])) / (1 + diff) / (1 + diff)
                qp = (qp + diff * q[t]) / (1 + diff)
                p = p / (1 + diff)
        out[i] = p[1]
    return out


#: Column positions of :meth:`_Table.reindex`, by (wanted names, table names).
_REINDEX_CACHE: dict[tuple[tuple[str, ...], tuple[str, ...]], np.ndarray] = {}


class _Table:
    """Named columns as one object array: the part of a DataFrame the forward pass needs.

    Keeps :class:`PortableModel` free of pandas (loading it for one prediction
    costs more than the prediction).
    """

    def __init__(self, values: np.ndarray, names: list[str] | None) -> None:
        self.values = values
        self.names = names
        self._pos_map: dict[str, int] | None = None

    @property
    def _pos(self) -> dict[str, int]:
        """Column name -> position, built on first use (many tables are only passed on)."""
        if self._pos_map is None:
            names = self.names if self.names is not None else []
            self._pos_map = {n: i for i, n in enumerate(names)}
        return self._pos_map

    @classmethod
    def of(cls, X: Any) -> _Table:
        if isinstance(X, _Table):
            return X
        if isinstance(X, dict):
            vals = list(X.values())
            if all(np.ndim(v) == 0 for v in vals):  # one row of scalars: the common case
                row = np.empty((1, len(vals)), dtype=object)
                row[0, :] = [v.item() if isinstance(v, np.ndarray) else v for v in vals]
                return cls(row, [str(k) for k in X])
            cols = {str(k): np.atleast_1d(np.asarray(v, dtype=object)) for k, v in X.items()}
            n = max((len(v) for v in cols.values()), default=0)
            vals = np.empty((n, len(cols)), dtype=object)
            for j, v in enumerate(cols.values()):
                vals[:, j] = v
            return cls(vals, list(cols))
        if hasattr(X, "columns") and hasattr(X, "to_numpy"):  # a pandas DataFrame
            return cls(X.to_numpy(dtype=object), [str(c) for c in X.columns])
        arr = np.asarray(X)
        return cls(arr[:, None] if arr.ndim == 1 else arr, None)

    @property
    def n(self) -> int:
        return len(self.values)

    def has(self, name: str) -> bool:
        return name in self._pos

    def column(self, name: str) -> np.ndarray:
        if name not in self._pos:
            raise ValueError(f"input lacks column {name!r}")
        return self.values[:, self._pos[name]]

    def take(self, idx: np.ndarray) -> _Table:
        names = [self.names[i] for i in idx] if self.names is not None else None
        return _Table(self.values[:, idx], names)

    def pick(self, names: list[str]) -> _Table:
        missing = [n for n in names if n not in self._pos]
        if missing:
            raise ValueError(f"input lacks column(s) {', '.join(missing)}")
        return _Table(self.values[:, [self._pos[n] for n in names]], list(names))

    def reindex(self, names: list[str]) -> _Table:
        """Columns ``names`` in that order; absent ones are missing (NaN)."""
        key = (tuple(names), tuple(self.names or ()))
        idx = _REINDEX_CACHE.get(key)
        if idx is None:  # each model reindexes every image's row the same way: look up once
            pos = self._pos
            idx = np.fromiter((pos.get(c, -1) for c in names), dtype=np.intp, count=len(names))
            if len(_REINDEX_CACHE) >= 256:
                _REINDEX_CACHE.clear()
            _REINDEX_CACHE[key] = idx
        vals = np.full((self.n, len(names)), np.nan, dtype=object)
        have = idx >= 0
        vals[:, have] = self.values[:, idx[have]]
        return _Table(vals, list(names))


def as_table(X: Any) -> _Table:
    """``X`` (array, DataFrame or dict of columns) in the form the forward pass reads.

    Convert once when several models score the same rows (a bundle's models
    all read one image's row).
    """
    return _Table.of(X)


def _objects(X: Any) -> np.ndarray:
    arr = X.values if isinstance(X, _Table) else np.asarray(X, dtype=object)
    return arr[:, None] if arr.ndim == 1 else arr


def _to_float(v: Any) -> float:
    """``pandas.to_numeric(v, errors="coerce")`` for one cell: numbers and numeric text, else NaN."""
    if v is None:
        return np.nan
    try:
        return float(v.strip() if isinstance(v, str) else v)
    except (TypeError, ValueError):
        return np.nan


def _as_float(X: Any) -> np.ndarray:
    arr = X.values if isinstance(X, _Table) else np.asarray(X)
    if arr.dtype == object:
        try:
            arr = arr.astype(float)
        except (TypeError, ValueError):
            arr = np.vectorize(_to_float, otypes=[float])(arr) if arr.size else arr.astype(float)
    arr = arr.astype(float)
    return arr[:, None] if arr.ndim == 1 else arr


def _is_nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _eq(v: Any, c: Any) -> bool:
    if v is None or c is None:
        return v is None and c is None
    try:
        return v == c or (
            isinstance(v, (int, float)) and isinstance(c, (int, float)) and float(v) == float(c)
        )
    except Exception:
        return False
