"""``buscad predict --manifest M --engine ray``: the same scoring on Ray Data (extra ``buscad[ray]``).

The manifest rows still to score (those without a row in ``OUT/parts``: see
:func:`buscad.bundle.batch.done_ids`) become a Ray dataset that streams
through a pool of stateful scoring actors (:class:`_Scorer`, one CPU each by
default) that load the bundle once (ONNX Runtime session,
``threads_per_worker`` threads) and score batches of rows with
:func:`buscad.bundle.batch.score_items`, the loop the local engine runs: ROI
(the bundle's segmenter when a row has no mask), the batched CNN pass, the
classical models (radiomics included) and the per-image JSON.

Decoding happens in the actor by default, so no image crosses the object store.
With ``decode_cpus`` it is a stage of its own ahead of the actors
(:func:`_decode_batch`, stateless Ray tasks reserving ``decode_cpus`` CPUs
each): each image and mask is read with :func:`buscad.bundle.batch.decode_item`
under the decode budget and travels on as ``.npy`` bytes, a failure as its
one-line reason. On a cluster the two stages then scale apart (many CPUs
decode for few scoring actors); on one machine, where the actors hold every
core, the extra hop halved the CNN-only rate (docs/scale.md).

The driver consumes the result stream and writes each batch as one atomic
Parquet shard (:class:`ShardWriter`), so a killed run resumes without losing or
repeating a row. Per-image failures are rows with an ``error``.

Timing, as the local engine counts it: ``seconds`` (and ``images_per_s``) run
from the moment the first scoring actor has loaded the bundle (its wall clock,
reported in a column dropped before writing) to the last row written;
``startup_seconds`` is what comes before (``ray.init``, Ray Data planning and
actor launch, bundle loading: about 10-15 s on 2 cores, paid once per run) and
``wall_seconds`` the whole call. On a cluster the actors' clocks are their
nodes' (NTP-synchronised).

Without ``address`` a local Ray is started for the run (and stopped after);
with one (``ray://host:10001`` or ``auto``) the job runs on that cluster,
whose workers must see the bundle, the images and the output folder at the
same paths (a shared filesystem).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from buscad.bundle.batch import (
    Item,
    Log,
    ShardWriter,
    decode_item,
    done_ids,
    finish,
    row_columns,
    rows_frame,
    score_items,
)

#: Column each scoring actor adds to its output (dropped before writing): the wall-clock
#: time its bundle was loaded, so the run's scoring time starts where the local engine's does.
READY_COLUMN = "_actor_ready_at"

#: Columns the decoding stage adds: the image and mask as ``.npy`` bytes (empty when
#: absent or failed), the reader's metadata as JSON, and the failure reason (or "").
DECODED_COLUMNS = ("pixels", "mask_pixels", "meta", "decode_error")


def _npy(a: Any) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()


def _from_npy(b: bytes) -> Any:
    import io

    import numpy as np

    return np.load(io.BytesIO(b), allow_pickle=False)


def _decode_batch(batch: Any, any_modality: bool = False) -> Any:
    """Ray's decoding stage: each row's image and mask read (or why not), as columns."""
    import dataclasses

    cols: dict[str, list[Any]] = {c: [] for c in DECODED_COLUMNS}
    for r in batch.to_dict("records"):
        item = Item(
            str(r["image_id"]), Path(r["image"]), Path(r["mask"]) if r["mask"] else None, {}
        )
        got = decode_item(item, any_modality)
        if isinstance(got, str):
            cols["pixels"].append(b"")
            cols["mask_pixels"].append(b"")
            cols["meta"].append("")
            cols["decode_error"].append(got)
            continue
        gray, meta, mask = got
        cols["pixels"].append(_npy(gray))
        cols["mask_pixels"].append(_npy(mask) if mask is not None else b"")
        cols["meta"].append(json.dumps(dataclasses.asdict(meta)))
        cols["decode_error"].append("")
    return batch.assign(**cols)


def _decoded(r: dict[str, Any]) -> Any:
    """A decoding-stage row back as :func:`decode_item`'s value."""
    from buscad.data.io import ImageMeta

    if r["decode_error"]:
        return r["decode_error"]
    mask = _from_npy(r["mask_pixels"]) if len(r["mask_pixels"]) else None
    return _from_npy(r["pixels"]), ImageMeta(**json.loads(r["meta"])), mask


class _Scorer:
    """A Ray actor: the bundle loaded once, scoring one batch of rows per call."""

    def __init__(
        self,
        bundle: str,
        out: str,
        heatmap: bool,
        any_modality: bool,
        threads: int,
        write_json: bool = False,
    ) -> None:
        from buscad.bundle.bundle import Bundle

        self.b = Bundle.load(bundle, engine="auto", num_threads=threads)
        self.out = Path(out)
        self.heatmap, self.any_modality, self.write_json = heatmap, any_modality, write_json
        self.columns = row_columns(self.b)
        self.ready_at = time.time()  # wall clock: the driver compares actors' times with its own

    def __call__(self, batch: Any) -> Any:
        records = batch.to_dict("records")
        items = [
            Item(
                str(r["image_id"]),
                Path(r["image"]),
                Path(r["mask"]) if r["mask"] else None,
                json.loads(r["clinical"]),
            )
            for r in records
        ]
        rows = score_items(
            self.b,
            items,
            self.out,
            heatmap=self.heatmap,
            any_modality=self.any_modality,
            keyed=True,
            batch_size=len(items),
            write_json=self.write_json,
            decoded=[_decoded(r) for r in records] if "decode_error" in batch else None,
        )
        return rows_frame(rows, self.columns).assign(**{READY_COLUMN: self.ready_at})


def run_ray(
    bundle: str | os.PathLike[str],
    items: Sequence[Item],
    out: str | os.PathLike[str],
    *,
    address: str | None = None,
    workers: int | None = None,
    batch_size: int = 32,
    heatmap: bool = True,
    any_modality: bool = False,
    threads_per_worker: int = 1,
    decode_cpus: float | None = None,
    write_json: bool = False,
    log: Log | None = None,
) -> dict[str, Any]:
    """Score items on Ray Data, resumably; returns the run summary (see :func:`finish`).

    Parameters
    ----------
    address : str, optional
        Ray cluster address; None starts a local Ray for this run.
    workers : int, optional
        Scoring actors (default: the CPUs Ray sees, divided by ``threads_per_worker``).
    batch_size : int
        Rows per actor call (one ONNX pass, one Parquet shard).
    decode_cpus : float, optional
        None (default): each scoring actor decodes its own rows. A number: decoding
        is a stage of its own, each task reserving this many CPUs; 0 lets it share
        the actors' cores (on one machine they reserve every CPU, so any
        reservation would leave decoding no slot).

    Raises
    ------
    ImportError
        Ray is not installed (``pip install "buscad[ray]"``).
    """
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise ImportError('--engine ray needs Ray: pip install "buscad[ray]"') from exc
    import pandas as pd

    from buscad.bundle.bundle import Bundle

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cols = row_columns(Bundle.load(bundle, engine="auto"))
    done = done_ids(out)
    todo = [it for it in items if it.image_id not in done]
    if done and log is not None:
        log(f"resuming: {len(items) - len(todo)} of {len(items)} images already scored", True)
    started, ready = False, float("inf")
    t_call = time.time()
    if not ray.is_initialized():
        kw: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
        }
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=workers * threads_per_worker if workers else os.cpu_count(), **kw)
        started = True
    writer = ShardWriter(out, cols)
    ctx = ray.data.DataContext.get_current()  # imports ray.data, which sets up its logging
    # Ray Data's per-run chatter (progress-bar notice, "execution finished") is not the user's;
    # the summary line and summary.json say what happened.
    data_log = logging.getLogger("ray.data")
    level = data_log.level
    data_log.setLevel(logging.ERROR)
    t0 = time.time()
    try:
        ctx.enable_progress_bars = False
        n_workers = workers or max(
            1, int(ray.cluster_resources().get("CPU", 1)) // threads_per_worker
        )
        if todo:
            table = pd.DataFrame(
                {
                    "image_id": [it.image_id for it in todo],
                    "image": [str(Path(it.image).resolve()) for it in todo],
                    "mask": [str(Path(it.mask).resolve()) if it.mask else "" for it in todo],
                    "clinical": [json.dumps(it.clinical, default=str) for it in todo],
                }
            )
            n_blocks = max(1, min(len(todo) // batch_size, 4 * n_workers))
            step = -(-len(table) // n_blocks)
            ds = ray.data.from_pandas(
                [table.iloc[i : i + step] for i in range(0, len(table), step)]
            )
            if decode_cpus is not None:
                ds = ds.map_batches(
                    _decode_batch,
                    fn_kwargs={"any_modality": any_modality},
                    batch_size=batch_size,
                    batch_format="pandas",
                    num_cpus=decode_cpus,
                )
            scored = ds.map_batches(
                _Scorer,
                fn_constructor_args=(
                    str(Path(bundle).resolve()),
                    str(out),
                    heatmap,
                    any_modality,
                    threads_per_worker,
                    write_json,
                ),
                batch_size=batch_size,
                batch_format="pandas",
                concurrency=n_workers,
                num_cpus=threads_per_worker,
            )
            for df in scored.iter_batches(batch_size=None, batch_format="pandas"):
                ready = min(ready, float(df[READY_COLUMN].min()))
                writer.write(df.drop(columns=READY_COLUMN).to_dict("records"))
    finally:
        data_log.setLevel(level)
        if started:
            ray.shutdown()
    t_end = time.time()
    secs = t_end - min(ready, t_end)
    return finish(
        out,
        items,
        {
            "engine": "ray",
            "address": address or "local",
            "workers": n_workers,
            "stages": (
                ["decode (Ray tasks)", "score (Ray actors)"]
                if decode_cpus is not None
                else ["decode and score (Ray actors)"]
            ),
            "bundle": str(bundle),
            "resumed_skipped": len(items) - len(todo),
            "this_run_rows": writer.n_rows,
            "ray_start_seconds": round(t0 - t_call, 3),
            "startup_seconds": round(min(ready, t_end) - t_call, 3),
            "wall_seconds": round(t_end - t_call, 3),
            "seconds": round(secs, 3),
            "images_per_s": round(len(todo) / secs, 2) if secs > 0 and todo else None,
        },
    )


__all__ = ["run_ray"]
