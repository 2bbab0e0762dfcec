"""One progress display for every long loop: a tqdm bar on a terminal, plain lines in logs.

Library code reports a loop with :class:`Progress` (or :func:`track`) and never
decides where the output goes. That is set by the :func:`reporting` context,
which the command line (``buscad ...``) and the study runner enter:

- the stream is a terminal: a tqdm bar (carriage returns redraw it in place);
- otherwise (a log file, a pipe, a CI job): one plain line at most every
  ``interval`` seconds (default 15; ``$BUSCAD_PROGRESS_INTERVAL``) and one at
  the end, never a carriage return::

      radiomics: 1200/3000 images (40%), 2 min 10 s elapsed, ETA 3 min 15 s
      radiomics: 3000/3000 images in 5 min 24 s

Outside any context (a library call, a test) nothing is shown unless the caller
passes ``enabled=True``; ``enabled=False`` silences one loop inside a context.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

#: Seconds between two plain progress lines when ``$BUSCAD_PROGRESS_INTERVAL`` is unset.
DEFAULT_INTERVAL = 15.0


@dataclass(frozen=True)
class _Settings:
    stream: TextIO | None  # None: sys.stderr at the time of writing
    interval: float
    bar: bool | None  # None: a tqdm bar exactly when the stream is a terminal


_CURRENT: ContextVar[_Settings | None] = ContextVar("buscad_progress", default=None)


def _env_interval() -> float:
    raw = os.environ.get("BUSCAD_PROGRESS_INTERVAL", "")
    try:
        return max(0.0, float(raw)) if raw.strip() else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


@contextlib.contextmanager
def reporting(
    stream: TextIO | None = None, interval: float | None = None, bar: bool | None = None
) -> Iterator[None]:
    """Show the progress of every :class:`Progress` opened inside this block.

    Parameters
    ----------
    stream : file-like, optional
        Where progress goes (default: standard error, looked up when written).
    interval : float, optional
        Seconds between plain lines (default ``$BUSCAD_PROGRESS_INTERVAL`` or 15).
    bar : bool, optional
        Force (True) or refuse (False) a tqdm bar; default: only on a terminal.

    A setting not given is inherited from an enclosing block.
    """
    outer = _CURRENT.get()  # what is not given is inherited from an enclosing block
    token = _CURRENT.set(
        _Settings(
            stream if stream is not None else (outer.stream if outer else None),
            float(interval)
            if interval is not None
            else (outer.interval if outer else _env_interval()),
            bar if bar is not None else (outer.bar if outer else None),
        )
    )
    try:
        yield
    finally:
        _CURRENT.reset(token)


def is_reporting() -> bool:
    """True inside a :func:`reporting` block."""
    return _CURRENT.get() is not None


def fmt_duration(seconds: float | None) -> str:
    """``4.2 s``, ``2 min 10 s``, ``1 h 05 min``; ``?`` for None."""
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(seconds), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a file
        return False


class Progress:
    """Progress of one loop of ``total`` items (see the module docstring).

    Parameters
    ----------
    total : int or None
        Number of items (None: unknown; no percentage or ETA).
    desc : str
        What is being done, e.g. ``"radiomics"``.
    unit : str
        Plural name of the items, e.g. ``"images"``.
    enabled : bool, optional
        True: show even outside :func:`reporting` (on standard error); False:
        never show; None (default): show inside :func:`reporting` only.
    every : bool
        Plain mode: write a line at every :meth:`update` (for few, slow items
        such as CNN epochs), not only every ``interval`` seconds.
    closing : bool
        Write a closing line (``desc: n/total unit in T``) at :meth:`close`;
        False for inner loops that an outer line already sums up.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "items",
        *,
        enabled: bool | None = None,
        every: bool = False,
        closing: bool = True,
    ) -> None:
        cur = _CURRENT.get()
        self.total = total
        self.desc = desc
        self.unit = unit
        self.every = every
        self.closing = closing
        self.n = 0
        self.stats: dict[str, Any] = {}
        self.active = enabled is True or (enabled is None and cur is not None)
        settings = cur or _Settings(None, _env_interval(), None)
        self._stream = settings.stream
        self.interval = settings.interval
        self._t0 = time.monotonic()
        self._last = self._t0
        self._bar: Any = None
        self._closed = False
        if self.active:
            use_bar = settings.bar if settings.bar is not None else _is_tty(self.stream)
            if use_bar:
                from tqdm.auto import tqdm

                self._bar = tqdm(
                    total=total,
                    desc=desc,
                    unit=unit.rstrip("s") or unit,
                    file=self.stream,
                    leave=False,
                    mininterval=0.5,
                    dynamic_ncols=True,
                )

    @property
    def stream(self) -> TextIO:
        """The stream progress goes to."""
        return self._stream if self._stream is not None else sys.stderr

    @property
    def elapsed(self) -> float:
        """Seconds since the loop started."""
        return time.monotonic() - self._t0

    def update(self, n: int = 1, **stats: Any) -> None:
        """Count ``n`` more items done; ``stats`` (e.g. ``loss=0.41``) are shown beside."""
        self.n += n
        if stats:
            self.stats.update(stats)
        if not self.active:
            return
        if self._bar is not None:
            if stats:
                self._bar.set_postfix(
                    {k: _fmt_stat(v) for k, v in self.stats.items()}, refresh=False
                )
            self._bar.update(n)
            return
        now = time.monotonic()
        if self.every or now - self._last >= self.interval:
            self._last = now
            if self.total is None or self.n < self.total:
                self._write(self.line())

    def note(self, text: str) -> None:
        """Write one line of text (kept above a tqdm bar)."""
        if not self.active:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            self._write(text)

    def line(self, final: bool = False) -> str:
        """The plain progress line as it stands (``final``: the closing line)."""
        el = self.elapsed
        if self.total is None:
            head = f"{self.desc}: {self.n} {self.unit}"
            head += f" in {fmt_duration(el)}" if final else f", {fmt_duration(el)} elapsed"
        elif final:
            head = f"{self.desc}: {self.n}/{self.total} {self.unit} in {fmt_duration(el)}"
        else:
            pct = 100.0 * self.n / self.total if self.total else 100.0
            eta = el / self.n * (self.total - self.n) if self.n else None
            head = (
                f"{self.desc}: {self.n}/{self.total} {self.unit} ({pct:.0f}%), "
                f"{fmt_duration(el)} elapsed, ETA {fmt_duration(eta)}"
            )
        if self.stats:
            head += "; " + ", ".join(f"{k} {_fmt_stat(v)}" for k, v in self.stats.items())
        return head

    def close(self) -> None:
        """End the loop: remove the bar and write the closing line (once)."""
        if self._closed:
            return
        self._closed = True
        if not self.active:
            return
        if self._bar is not None:
            self._bar.close()
        if self.closing and (self.n or self.total):
            self._write(self.line(final=True))

    def _write(self, text: str) -> None:
        s = self.stream
        s.write(text + "\n")
        with contextlib.suppress(Exception):
            s.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt_stat(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if v == v else "n/a"
    return str(v)


def track(
    iterable: Iterable[T],
    desc: str,
    unit: str = "items",
    total: int | None = None,
    *,
    enabled: bool | None = None,
    closing: bool = True,
) -> Iterator[T]:
    """Iterate over ``iterable`` showing a :class:`Progress` (``total`` from ``len`` when known)."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Progress(total, desc, unit, enabled=enabled, closing=closing) as p:
        for item in iterable:
            yield item
            p.update()


__all__ = ["DEFAULT_INTERVAL", "Progress", "fmt_duration", "is_reporting", "reporting", "track"]
