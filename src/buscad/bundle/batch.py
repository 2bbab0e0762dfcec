"""The per-image scoring loop of ``buscad predict``, shared by the local and the Ray engines.

An :class:`Item` is one image to score (its id, file, optional mask and
clinical/lexicon inputs). :func:`score_items` turns a list of items into one
summary row each (a failed image is a row with an ``error``, never an
exception) and writes each image's JSON (and Grad-CAM overlay) into the output
folder. On the ONNX engine the CNN runs once per chunk of images
(:func:`predict_batch`); otherwise each image goes through ``Bundle.predict``.

Manifest runs are resumable: :class:`ShardWriter` appends each scored chunk as
one Parquet shard ``parts/part-*.parquet`` written atomically (temporary file
then rename), and :func:`done_ids` lists the ``image_id`` values already in a
shard, so a rerun scores only the rest and no row is written twice.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from buscad.bundle.types import Prediction
from buscad.errors import BuscadError, ManifestError
from buscad.progress import Progress

#: Folder of a resumable run's Parquet shards, inside the output folder.
PARTS = "parts"
Log = Callable[[str, bool], None]


def _no_log(_msg: str, _err: bool) -> None:
    return None


@dataclass
class Item:
    """One image to score.

    Attributes
    ----------
    image_id : str
        Row key (manifest ``image_id``, else the file stem).
    image : pathlib.Path
        Image file.
    mask : pathlib.Path or None
        Lesion mask file.
    clinical : dict
        Clinical/lexicon inputs by column name.
    note : str
        A line for stderr before scoring (e.g. no clinical row for this image).
    """

    image_id: str
    image: Path
    mask: Path | None = None
    clinical: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def safe_name(image_id: str) -> str:
    """A file-name-safe form of an id (characters other than ``[A-Za-z0-9_.-]`` become ``_``)."""
    return re.sub(r"[^\w.-]", "_", image_id)[:200] or "_"


def items_from_manifest(path: str | os.PathLike[str], inputs: Sequence[str] = ()) -> list[Item]:
    """Items of a buscad manifest (CSV or Parquet; paths relative to its folder).

    Parameters
    ----------
    inputs : sequence of str
        Clinical/lexicon columns the bundle reads; those present are paired with
        each row (empty values left out).

    Raises
    ------
    ManifestError
        Unreadable table, no ``image_path`` column, or duplicate ``image_id``.
    """
    import pandas as pd

    from buscad.data.manifest import Manifest

    m = Manifest.load(path, validate=False)
    df = m.df
    if "image_path" not in df.columns:
        raise ManifestError(m.source, "needs an 'image_path' column")
    ids = (
        df["image_id"].astype(str).tolist()
        if "image_id" in df.columns
        else [Path(str(p)).stem for p in df["image_path"]]
    )
    dup = pd.Series(ids)[pd.Series(ids).duplicated()]
    if len(dup):
        raise ManifestError(m.source, f"duplicate image_id {dup.iloc[0]!r}")
    items = []
    for i, iid in enumerate(ids):
        masks = m.mask_paths(i)
        clin = row_inputs(df, i, inputs)
        items.append(Item(iid, m.image_path(i), masks[0] if masks else None, clin))
    return items


def row_inputs(df: Any, i: int, inputs: Sequence[str]) -> dict[str, Any]:
    """The clinical/lexicon inputs of row ``i`` of a manifest table (``buscad predict``, reader study).

    Columns of ``inputs`` that the table has, empty cells left out, NumPy
    scalars as Python values.
    """
    clin: dict[str, Any] = {}
    for c in inputs:
        if c not in df.columns:
            continue
        v = df[c].iat[i]
        if v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "":
            continue
        clin[c] = v.item() if isinstance(v, np.generic) else v
    return clin


def _decode(item: Item, any_modality: bool) -> tuple[np.ndarray, dict, np.ndarray | None]:
    from buscad.data.io import read_image, read_mask, reader_settings

    with reader_settings(allow_modality=True if any_modality else None):
        gray, meta = read_image(item.image)
        m = read_mask(item.mask, shape=gray.shape) if item.mask is not None else None
    return gray, meta, m


def decode_item(
    item: Item, any_modality: bool = False
) -> tuple[np.ndarray, Any, np.ndarray | None] | str:
    """An item's decoded image, its :class:`~buscad.data.io.ImageMeta` and mask, or why not.

    Never raises: a failure is returned as its one-line reason (an unexpected one as
    ``internal error reading FILE: ...``), so a batch goes on past it.
    """
    from buscad.errors import internal_error

    try:
        return _decode(item, any_modality)
    except (BuscadError, ValueError) as exc:
        return " ".join(str(exc).split())
    except Exception as exc:  # never abort the batch: report and go on
        return internal_error(item.image, exc)


def predict_batch(
    b: Any,
    grays: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None],
    clinicals: Sequence[dict[str, Any]],
    heatmap: bool = True,
) -> list[Prediction | Exception]:
    """``Bundle.predict`` for several images, with one ONNX Runtime pass for the CNN.

    Each image is prepared as ``Bundle.predict`` prepares it (its outline by the
    bundle's segmenter when it has no mask, ROI, crop: ``Bundle._prepare``) and
    finished as it finishes it (heatmap, the other models, calibration:
    ``Bundle._finish``); only the CNN runs once for the batch. So the predictions are
    those of ``b.predict`` on each image (tested); an image whose ROI is invalid
    (e.g. an empty mask) gets its exception in place of a prediction. Engines
    other than ONNX call ``b.predict`` per image.
    """
    if getattr(b, "engine", None) != "onnx" or getattr(b, "_onnx", None) is None:
        out: list[Prediction | Exception] = []
        for g, m, c in zip(grays, masks, clinicals, strict=True):
            try:
                out.append(b.predict(g, mask=m, clinical=c, heatmap=heatmap))
            except (BuscadError, ValueError) as exc:
                out.append(exc)
        return out
    res: list[Any] = [None] * len(grays)
    prep = []
    for i, (gray, m) in enumerate(zip(grays, masks, strict=True)):
        try:
            prep.append((i, b._prepare(gray, m)))
        except (BuscadError, ValueError) as exc:
            res[i] = exc
    if not prep:
        return res
    with b._lock:
        t1 = time.perf_counter()
        x = b.pre.to_array(np.stack([p.crop for _, p in prep]))
        if heatmap:
            probs, feats, cams = b._onnx.explain(x)
        else:  # ONNX Runtime then skips the Grad-CAM nodes (about half the graph)
            o = b._onnx
            probs, feats = o.session.run(["probabilities", "features"], {o.input_name: x})
        model_ms = (time.perf_counter() - t1) * 1000 / len(prep)
    for j, (i, p) in enumerate(prep):
        p.timings["model"] = model_ms
        try:
            cam = cams[j] if heatmap else None
            res[i] = b._finish(p, float(probs[j, 1]), cam, feats[j], clinicals[i])
        except (BuscadError, ValueError) as exc:
            res[i] = exc
    return res


def score_items(
    b: Any,
    items: Sequence[Item],
    out: Path,
    *,
    heatmap: bool = True,
    any_modality: bool = False,
    keyed: bool = False,
    batch_size: int = 1,
    write_json: bool = True,
    log: Log = _no_log,
    decoded: Sequence[Any] | None = None,
) -> list[dict[str, Any]]:
    """Score items with a bundle: one summary row each, JSON (and overlay) files in ``out``.

    Parameters
    ----------
    keyed : bool
        Manifest mode: rows start with ``image_id`` and files are named by the
        id; otherwise (a list of files) rows start with ``image`` and files are
        named by the file stem, as ``buscad predict IMAGES`` always did.
    batch_size : int
        Images per CNN pass (ONNX engine; 1 = one ``Bundle.predict`` per image).
    write_json : bool
        Write each image's JSON (always written with ``heatmap``, beside its
        overlay). Keyed rows carry the ROI and the skipped models' reasons.
    log : callable
        ``log(message, to_stderr)`` for the per-image lines.
    decoded : sequence, optional
        :func:`decode_item` of each item, when decoded elsewhere (the Ray engine's
        decoding stage); by default each item is decoded here.

    Returns
    -------
    list of dict
        One row per item, in order: the scores, or ``error`` with the reason.
    """
    from buscad.bundle.safety import with_image_checks
    from buscad.data.io import burned_in_warning, to_uint8
    from buscad.errors import internal_error
    from buscad.explain.heatmap import overlay, save_png
    from buscad.utils import atomic_write_json

    named = names_headline(b)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(items), max(1, batch_size)):
        chunk = items[start : start + max(1, batch_size)]
        done = (
            list(decoded[start : start + len(chunk)])
            if decoded is not None
            else [decode_item(it, any_modality) for it in chunk]
        )
        ok = [k for k, d in enumerate(done) if not isinstance(d, str)]
        preds: dict[int, Any] = {}
        if batch_size <= 1:
            for k in ok:
                gray, _meta, m = done[k]
                try:
                    preds[k] = b.predict(gray, mask=m, clinical=chunk[k].clinical, heatmap=heatmap)
                except Exception as exc:
                    preds[k] = exc
        elif ok:
            try:
                got = predict_batch(
                    b,
                    [done[k][0] for k in ok],
                    [done[k][2] for k in ok],
                    [chunk[k].clinical for k in ok],
                    heatmap=heatmap,
                )
            except Exception as exc:  # a whole-batch failure: every image gets the reason
                got = [exc] * len(ok)
            preds = dict(zip(ok, got, strict=True))
        for k, it in enumerate(chunk):
            head = {"image_id": it.image_id} if keyed else {}
            head["image"] = str(it.image)
            if isinstance(done[k], str):
                log(f"skipped: {done[k]}", True)
                rows.append({**head, "error": done[k]})
                continue
            gray, meta, _m = done[k]
            pred = preds[k]
            try:
                if isinstance(pred, Exception):
                    raise pred
                if it.note:
                    log(it.note, True)
                warning = burned_in_warning(gray, meta)
                warnings = [warning] if warning else []
                pred = with_image_checks(pred, meta)
                if write_json or heatmap:  # the JSON (to_json copies every field: skip it)
                    doc = {
                        "image": str(it.image),
                        "bundle": b.name,
                        "engine": b.engine,
                        "banner": pred.banner,
                        **pred.to_json(),
                        "warnings": warnings,
                    }
                    stem = safe_name(it.image_id) if keyed else it.image.stem
                    if heatmap and pred.heatmap is not None:
                        doc["overlay"] = str(
                            save_png(
                                overlay(to_uint8(gray), pred.heatmap), out / f"{stem}_overlay.png"
                            )
                        )
                    if keyed:
                        doc = {"image_id": it.image_id, **doc}
                    atomic_write_json(out / f"{stem}.json", doc)
            except (BuscadError, ValueError) as exc:
                log(f"skipped: {exc}", True)
                rows.append({**head, "error": " ".join(str(exc).split())})
                continue
            except Exception as exc:  # never abort the batch: report and go on
                reason = internal_error(it.image, exc)
                log(f"skipped: {reason}", True)
                rows.append({**head, "error": reason})
                continue
            if warning:
                log(f"WARNING: {it.image}: {warning}", True)
            rows.append(
                {
                    **head,
                    "ai_score": pred.ai_score,
                    **({"headline_model": pred.primary_model} if named else {}),
                    "threshold": pred.threshold,
                    "decision": pred.decision,
                    "band": pred.band.category,
                    "withheld": "yes" if pred.withheld else "no",
                    "cautions": "; ".join(pred.cautions),
                    "roi_source": pred.roi_source,
                    "roi_confidence": getattr(pred, "roi_confidence", None),
                    "predicted_dice": getattr(pred, "predicted_dice", None),
                    "outline_flagged": "yes" if getattr(pred, "outline_flagged", False) else "no",
                    **({"roi": " ".join(map(str, pred.roi))} if keyed else {}),
                    **{f"p_{n}": v for n, v in pred.model_scores.items() if named or n != "deep"},
                    **(
                        {
                            "skipped_models": "; ".join(
                                f"{k}: {v}" for k, v in pred.skipped_models.items()
                            )
                        }
                        if keyed
                        else {}
                    ),
                    "ms": round(sum(pred.timings_ms.values()), 1),
                    "warnings": "; ".join(warnings),
                    "error": "",
                }
            )
            log(f"{it.image}: {pred.text()} ({sum(pred.timings_ms.values()):.0f} ms)", False)
            if not keyed and len(pred.model_scores) + len(pred.skipped_models) > 1:
                log("  " + models_text(pred), False)
    return rows


def models_text(pred: Prediction) -> str:
    """Every model's score in plain names, e.g. ``Radiomics score 41.0%; Clinical model: not run (...)``.

    The primary model (the AI score) is left out: the result line gives it.
    """
    from buscad.labels import model_label

    parts = []
    names = [*pred.model_scores, *(n for n in pred.skipped_models if n not in pred.model_scores)]
    for n in names:
        if n == pred.primary_model:
            continue
        s = pred.model_scores.get(n)
        if s is None or not np.isfinite(s):
            why = pred.skipped_models.get(n, "")
            parts.append(f"{model_label(n)}: not run" + (f" ({why})" if why else ""))
        else:
            parts.append(f"{model_label(n)} {100 * s:.1f}%")
    return "; ".join(parts)


# ------------------------------------------------------------- resumable output
def names_headline(b: Any) -> bool:
    """Whether bundle ``b`` names a headline model other than the CNN (``headline_model``).

    Its rows then say which model gave each image's ``ai_score`` (``headline_model``)
    and keep the CNN's score as ``p_deep``; otherwise ``ai_score`` is the CNN's, as before.
    """
    return getattr(b, "headline_model", "deep") != "deep"


def row_columns(b: Any) -> list[str]:
    """The fixed column order of a manifest run's rows for bundle ``b``."""
    named = names_headline(b)
    models = [n for n in getattr(b, "model_names", []) if named or n != "deep"]
    return [
        "image_id",
        "image",
        "ai_score",
        *(["headline_model"] if named else []),
        "threshold",
        "decision",
        "band",
        "withheld",
        "cautions",
        "roi_source",
        "roi_confidence",
        "predicted_dice",
        "outline_flagged",
        "roi",
        *(f"p_{n}" for n in models),
        "skipped_models",
        "ms",
        "warnings",
        "error",
    ]


def rows_frame(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> Any:
    """Rows as a DataFrame with exactly ``columns`` (numbers float, text str; missing empty)."""
    import pandas as pd

    df = pd.DataFrame(list(rows))
    for c in columns:
        if c not in df.columns:
            df[c] = np.nan if (c.startswith("p_") or c in ("ai_score", "threshold", "ms")) else ""
    df = df[list(columns)]
    for c in columns:
        if c.startswith("p_") or c in ("ai_score", "threshold", "ms"):
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
        else:
            df[c] = df[c].astype(object).fillna("").astype(str)  # an all-NaN column is float
    return df


def done_ids(out: str | os.PathLike[str]) -> set[str]:
    """``image_id`` values already written to ``out/parts/*.parquet`` (finished rows)."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    for f in sorted((Path(out) / PARTS).glob("part-*.parquet")):
        done.update(str(v) for v in pq.read_table(f, columns=["image_id"]).column(0).to_pylist())
    return done


class ShardWriter:
    """Appends rows to ``out/parts/`` as atomically written Parquet shards.

    A shard is complete or absent: a run killed mid-write leaves no partial
    shard, so its rows are scored again on the next run and never twice.
    """

    def __init__(self, out: str | os.PathLike[str], columns: Sequence[str]) -> None:
        self.dir = Path(out) / PARTS
        self.dir.mkdir(parents=True, exist_ok=True)
        self.columns = list(columns)
        self.run = uuid.uuid4().hex[:8]
        self.n_shards = 0
        self.n_rows = 0

    def write(self, rows: Sequence[dict[str, Any]]) -> Path | None:
        """Write one shard (nothing for no rows); returns its path."""
        from buscad.utils import atomic_write_table

        if not rows:
            return None
        f = self.dir / f"part-{self.run}-{self.n_shards:06d}.parquet"
        atomic_write_table(rows_frame(rows, self.columns), f)
        self.n_shards += 1
        self.n_rows += len(rows)
        return f


def collect(out: str | os.PathLike[str], order: Sequence[str] | None = None) -> Any:
    """Every shard's rows as one DataFrame (in ``order`` of ``image_id`` when given)."""
    import pandas as pd

    files = sorted((Path(out) / PARTS).glob("part-*.parquet"))
    if not files:
        return pd.DataFrame()
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    if order is not None:
        rank = {k: i for i, k in enumerate(order)}
        df = df.assign(_o=df["image_id"].map(rank)).sort_values("_o", kind="stable")
        df = df.drop(columns="_o").reset_index(drop=True)
    return df


def finish(
    out: str | os.PathLike[str], items: Sequence[Item], info: dict[str, Any]
) -> dict[str, Any]:
    """Write ``summary.csv`` (all shards, manifest order) and ``summary.json``; return the summary.

    ``summary.json`` holds ``n_items``, ``n_rows``, ``n_scored``, ``n_failed``,
    ``duplicates`` (ids in more than one row: 0 unless the output was tampered
    with) and ``missing`` (manifest ids without a row), plus ``info``.
    """
    from buscad.utils import atomic_write_json, atomic_write_table

    out = Path(out)
    df = collect(out, [it.image_id for it in items])
    n_rows = len(df)
    ids = df["image_id"].astype(str) if n_rows else []
    failed = int((df["error"].astype(str) != "").sum()) if n_rows else 0
    summary = {
        "n_items": len(items),
        "n_rows": n_rows,
        "n_scored": n_rows - failed,
        "n_failed": failed,
        "duplicates": int(n_rows - len(set(ids))) if n_rows else 0,
        "missing": len({it.image_id for it in items} - set(ids)) if n_rows else len(items),
        **info,
    }
    if n_rows:
        atomic_write_table(df, out / "summary.csv")
    atomic_write_json(out / "summary.json", summary)
    return summary


def run_local(
    b: Any,
    items: Sequence[Item],
    out: Path,
    *,
    heatmap: bool = True,
    any_modality: bool = False,
    batch_size: int = 32,
    write_json: bool = False,
    log: Log = _no_log,
) -> dict[str, Any]:
    """Score a manifest's items in this process, resumably (see :class:`ShardWriter`)."""
    out.mkdir(parents=True, exist_ok=True)
    done = done_ids(out)
    todo = [it for it in items if it.image_id not in done]
    if done:
        log(f"resuming: {len(items) - len(todo)} of {len(items)} images already scored", True)
    writer = ShardWriter(out, row_columns(b))
    t0 = time.perf_counter()
    step = max(batch_size, 1) * 8  # rows per shard
    bar = Progress(len(todo), "predict", "images")
    for s in range(0, len(todo), step):
        rows = score_items(
            b,
            todo[s : s + step],
            out,
            heatmap=heatmap,
            any_modality=any_modality,
            keyed=True,
            batch_size=batch_size,
            write_json=write_json,
            log=log,
        )
        writer.write(rows)
        bar.update(len(rows))
    bar.close()
    secs = time.perf_counter() - t0
    return finish(
        out,
        items,
        {
            "engine": "local",
            "bundle": b.name,
            "inference": b.engine,
            "resumed_skipped": len(items) - len(todo),
            "this_run_rows": writer.n_rows,
            "seconds": round(secs, 3),
            "images_per_s": round(len(todo) / secs, 2) if secs > 0 and todo else None,
        },
    )


__all__ = [
    "Item",
    "ShardWriter",
    "collect",
    "decode_item",
    "done_ids",
    "finish",
    "items_from_manifest",
    "models_text",
    "names_headline",
    "predict_batch",
    "row_columns",
    "row_inputs",
    "rows_frame",
    "run_local",
    "safe_name",
    "score_items",
]
