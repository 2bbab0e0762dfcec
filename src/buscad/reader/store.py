"""Append-only reader-study store on SQLite.

A reader study shows each case of a fixed case list to every reader twice:
round 1 without AI, then, after a washout, round 2 with the AI score and
heatmap. Each read (one reader, one case, one round) is a row that is never
updated or deleted: triggers refuse ``UPDATE`` and ``DELETE`` on ``reads``, and
a second submission of the same (reader, case, round) is refused with
:class:`DuplicateReadError`.

Durability: the database runs in WAL mode with ``synchronous=FULL`` and every
:meth:`ReaderStudy.record` commits before it returns, so a crashed server or a
closed browser tab loses no submitted read. Every call opens its own
connection, so any number of :class:`ReaderStudy` objects (threads, worker
processes) may share one file.

Privacy: the store keeps the manifest's ``image_id`` values as case ids and
nothing else from the manifest (no ``patient_id``, no clinical columns).

One database file holds one study.

Access: the organiser and each reader hold a random bearer token
(:func:`secrets.token_urlsafe`, 256 bits). The database keeps only the token's
SHA-256 (a fast hash is right for random, high-entropy secrets), compares with
:func:`hmac.compare_digest`, and a token can be rotated or revoked. Schema
version 2 added the ``tokens`` table; a version-1 file is migrated on open.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import os
import re
import secrets
import sqlite3
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from buscad.data.manifest import Manifest, normalize_birads
from buscad.errors import BuscadError

#: BI-RADS categories a reader may assign in a study (0 = incomplete and
#: 6 = known biopsy-proven cancer are not assessments of an unknown lesion).
READ_CATEGORIES: tuple[str, ...] = ("1", "2", "3", "4", "4a", "4b", "4c", "5")
ROUNDS: tuple[int, ...] = (1, 2)
SCHEMA_VERSION = 2
READS_COLUMNS: tuple[str, ...] = (
    "study_id",
    "reader_id",
    "case_id",
    "round",
    "with_ai",
    "birads",
    "confidence",
    "ai_score",
    "time_taken_s",
    "recorded_at",
)
#: Reader pseudonyms; always used with ``fullmatch`` (``$`` would accept a trailing newline).
_READER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: Roles a token can carry.
ROLES: tuple[str, ...] = ("organiser", "reader")
#: Random bytes in a token (256 bits).
TOKEN_BYTES = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    id TEXT PRIMARY KEY,
    manifest_path TEXT NOT NULL,
    manifest_sha256 TEXT,
    n_cases INTEGER NOT NULL,
    washout_days REAL NOT NULL CHECK (washout_days >= 0),
    seed INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS study_cases (
    study_id TEXT NOT NULL REFERENCES studies(id),
    position INTEGER NOT NULL,
    case_id TEXT NOT NULL,
    PRIMARY KEY (study_id, case_id),
    UNIQUE (study_id, position)
);
CREATE TABLE IF NOT EXISTS readers (
    study_id TEXT NOT NULL REFERENCES studies(id),
    reader_id TEXT NOT NULL,
    seed INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (study_id, reader_id)
);
CREATE TABLE IF NOT EXISTS reader_orders (
    study_id TEXT NOT NULL,
    reader_id TEXT NOT NULL,
    round INTEGER NOT NULL CHECK (round IN (1, 2)),
    position INTEGER NOT NULL,
    case_id TEXT NOT NULL,
    PRIMARY KEY (study_id, reader_id, round, position),
    UNIQUE (study_id, reader_id, round, case_id),
    FOREIGN KEY (study_id, reader_id) REFERENCES readers(study_id, reader_id),
    FOREIGN KEY (study_id, case_id) REFERENCES study_cases(study_id, case_id)
);
CREATE TABLE IF NOT EXISTS reads (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id TEXT NOT NULL,
    reader_id TEXT NOT NULL,
    case_id TEXT NOT NULL,
    round INTEGER NOT NULL CHECK (round IN (1, 2)),
    with_ai INTEGER NOT NULL CHECK (with_ai IN (0, 1)),
    birads TEXT NOT NULL,
    confidence REAL CHECK (confidence IS NULL OR (confidence >= 0 AND confidence <= 100)),
    ai_score REAL,
    time_taken_s REAL CHECK (time_taken_s IS NULL OR time_taken_s >= 0),
    recorded_at TEXT NOT NULL,
    UNIQUE (study_id, reader_id, case_id, round),
    FOREIGN KEY (study_id, reader_id) REFERENCES readers(study_id, reader_id),
    FOREIGN KEY (study_id, case_id) REFERENCES study_cases(study_id, case_id)
);
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    role TEXT NOT NULL CHECK (role IN ('organiser', 'reader')),
    reader_id TEXT,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT,
    CHECK ((role = 'reader') = (reader_id IS NOT NULL))
);
CREATE TRIGGER IF NOT EXISTS reads_no_update BEFORE UPDATE ON reads
BEGIN SELECT RAISE(ABORT, 'reads are append-only: a read cannot be changed'); END;
CREATE TRIGGER IF NOT EXISTS reads_no_delete BEFORE DELETE ON reads
BEGIN SELECT RAISE(ABORT, 'reads are append-only: a read cannot be deleted'); END;
"""


class ReaderStudyError(BuscadError):
    """A reader-study operation was refused; the message says why, on one line."""


class DuplicateReadError(ReaderStudyError):
    """The (reader, case, round) was already read; the stored read is kept unchanged."""


class RoundNotOpenError(ReaderStudyError):
    """Round 2 was asked for before the reader finished round 1 and the washout elapsed."""


Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Identity:
    """Who a valid token belongs to: ``role`` is ``organiser`` or ``reader``."""

    role: str
    reader_id: str | None = None

    @property
    def is_organiser(self) -> bool:
        """The organiser's token."""
        return self.role == "organiser"


def token_hash(token: str) -> str:
    """SHA-256 (hex) of a token's UTF-8 bytes: what the database stores."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def valid_reader_id(reader_id: object) -> bool:
    """A reader pseudonym: 1-64 of letters, digits, ``_ . -``, starting with a letter or digit."""
    return isinstance(reader_id, str) and _READER_ID_RE.fullmatch(reader_id) is not None


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC (the default clock)."""
    return datetime.now(UTC)


def _iso(t: datetime) -> str:
    if t.tzinfo is None:
        raise ValueError("the clock must return timezone-aware datetimes")
    return t.astimezone(UTC).isoformat(timespec="microseconds")


def _parse(s: str) -> datetime:
    return datetime.fromisoformat(s)


@dataclass(frozen=True)
class Progress:
    """Where one reader stands.

    Attributes
    ----------
    reader_id : str
    n_cases : int
        Cases in the study (per round).
    round1_done, round2_done : int
        Reads recorded in each round.
    round1_completed_at : datetime or None
        Time of the reader's last round-1 read once round 1 is complete.
    round2_opens_at : datetime or None
        ``round1_completed_at + washout``; None while round 1 is incomplete.
    round2_open : bool
        Round 1 complete and the washout elapsed (by the store's clock).
    """

    reader_id: str
    n_cases: int
    round1_done: int
    round2_done: int
    round1_completed_at: datetime | None
    round2_opens_at: datetime | None
    round2_open: bool

    @property
    def complete(self) -> bool:
        """Both rounds fully read."""
        return self.round1_done == self.n_cases and self.round2_done == self.n_cases

    def as_dict(self) -> dict:
        """Plain dict (datetimes as ISO strings)."""
        d = asdict(self)
        for k in ("round1_completed_at", "round2_opens_at"):
            d[k] = d[k].isoformat() if d[k] is not None else None
        d["complete"] = self.complete
        return d


def reader_seed(study_seed: int, reader_id: str) -> int:
    """Seed of a reader's case orders: ``SeedSequence([study_seed, crc32(reader_id)])``.

    Deterministic across platforms and Python runs (``crc32`` of the UTF-8
    reader id, not Python's salted ``hash``).
    """
    ss = np.random.SeedSequence([int(study_seed) & 0xFFFFFFFF, zlib.crc32(reader_id.encode())])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def case_orders(case_ids: Sequence[str], seed: int) -> dict[int, list[str]]:
    """Independent random permutations of ``case_ids`` for rounds 1 and 2."""
    rng = np.random.default_rng(seed)
    ids = list(case_ids)
    return {r: [ids[i] for i in rng.permutation(len(ids))] for r in ROUNDS}


class ReaderStudy:
    """A before/after reader study stored in one SQLite file.

    Use :meth:`create` for a new study and :meth:`open` for an existing one;
    ``__init__`` only stores its arguments.

    Parameters
    ----------
    db_path : path-like
        The SQLite database.
    clock : callable, optional
        Returns the current timezone-aware time; inject a fake clock in tests.
    """

    def __init__(self, db_path: str | os.PathLike[str], clock: Clock | None = None) -> None:
        self.db_path = Path(db_path)
        self.clock = clock or utc_now

    # ----------------------------------------------------------- connection
    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA foreign_keys=ON")
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on error)."""
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # ------------------------------------------------------------ lifecycle
    @classmethod
    def create(
        cls,
        db_path: str | os.PathLike[str],
        manifest: str | os.PathLike[str] | Manifest,
        washout_days: float = 14,
        seed: int = 0,
        case_ids: Sequence[str] | None = None,
        clock: Clock | None = None,
    ) -> ReaderStudy:
        """Create a new study database.

        Parameters
        ----------
        db_path : path-like
            New SQLite file; refused when it already holds a study.
        manifest : path-like or Manifest
            The cases; their ``image_id`` values become the case ids.
        washout_days : float, default 14
            Minimum time between a reader's last round-1 read and round 2.
        seed : int
            Study seed; each reader's case orders derive from it and the reader id.
        case_ids : sequence of str, optional
            A subset of the manifest's ids (default: every row).
        clock : callable, optional
            See :class:`ReaderStudy`.

        Raises
        ------
        ReaderStudyError
            Existing study, empty or duplicate case list, ids absent from the manifest.
        """
        from buscad.utils import file_sha256

        if isinstance(manifest, Manifest):
            man = manifest
            man_path = man.source
        else:
            man_path = Path(manifest)
            man = Manifest.load(man_path)
        man_path = Path(man_path).resolve()
        sha = file_sha256(man_path) if man_path.is_file() else None
        ids_all = [str(v) for v in man.df["image_id"]]
        if case_ids is None:
            ids = ids_all
        else:
            ids = [str(v) for v in case_ids]
            unknown = sorted(set(ids) - set(ids_all))
            if unknown:
                raise ReaderStudyError(
                    f"{man_path}: {len(unknown)} case id(s) not in the manifest, e.g. {unknown[0]!r}"
                )
        if not ids:
            raise ReaderStudyError(f"{man_path}: the study needs at least one case")
        if len(set(ids)) != len(ids):
            raise ReaderStudyError(f"{man_path}: duplicate case ids in the case list")
        washout = float(washout_days)
        if not math.isfinite(washout) or washout < 0:
            raise ReaderStudyError(f"washout_days must be >= 0, got {washout_days!r}")
        study = cls(db_path, clock=clock)
        study.db_path.parent.mkdir(parents=True, exist_ok=True)
        with study._connect() as con:
            con.executescript(_SCHEMA)
        with study._transaction() as con:
            if con.execute("SELECT COUNT(*) FROM studies").fetchone()[0]:
                raise ReaderStudyError(f"{study.db_path}: already holds a reader study")
            sid = uuid.uuid4().hex[:12]
            con.execute(
                "INSERT INTO meta VALUES ('schema_version', ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
            con.execute(
                "INSERT INTO studies VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sid, str(man_path), sha, len(ids), washout, int(seed), _iso(study.clock())),
            )
            con.executemany(
                "INSERT INTO study_cases VALUES (?, ?, ?)",
                [(sid, i, cid) for i, cid in enumerate(ids)],
            )
        return study

    @classmethod
    def open(cls, db_path: str | os.PathLike[str], clock: Clock | None = None) -> ReaderStudy:
        """Open an existing study (e.g. after a crash or restart).

        Raises
        ------
        ReaderStudyError
            Missing file or a file without a study.
        """
        p = Path(db_path)
        if not p.is_file():
            raise ReaderStudyError(f"{p}: reader-study database not found")
        study = cls(p, clock=clock)
        try:
            study._migrate()
            study._study_row()
        except sqlite3.DatabaseError as exc:
            raise ReaderStudyError(f"{p}: not a reader-study database ({exc})") from exc
        return study

    @classmethod
    def prepare(cls, db_path: str | os.PathLike[str], clock: Clock | None = None) -> ReaderStudy:
        """Open or create the database's tables without requiring a study yet.

        The server calls this at start-up so that the organiser's token can be
        issued before the study is created from the web page.

        Raises
        ------
        ReaderStudyError
            The file exists but is not a reader-study database, or is newer than this code.
        """
        study = cls(db_path, clock=clock)
        study.db_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with study._connect() as con:
                con.executescript(_SCHEMA)
            study._migrate()
        except sqlite3.DatabaseError as exc:
            raise ReaderStudyError(f"{study.db_path}: not a reader-study database ({exc})") from exc
        return study

    def _migrate(self) -> None:
        """Bring an older database to :data:`SCHEMA_VERSION` (1 -> 2 adds ``tokens``)."""
        with self._connect() as con:
            has_meta = con.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
            ).fetchone()
            if not has_meta:
                return  # not ours: the caller's query fails with a clear message
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row is not None else 1
            if version > SCHEMA_VERSION:
                raise ReaderStudyError(
                    f"{self.db_path}: schema version {version} is newer than this buscad "
                    f"({SCHEMA_VERSION}); upgrade buscad"
                )
            if version < SCHEMA_VERSION:
                con.executescript(_SCHEMA)  # idempotent: adds the tables that are missing
            if row is None or version < SCHEMA_VERSION:
                con.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (str(SCHEMA_VERSION),),
                )

    def has_study(self) -> bool:
        """Whether the database holds a study (False for a prepared, empty one)."""
        if not self.db_path.is_file():
            return False
        try:
            with self._connect() as con:
                return bool(con.execute("SELECT COUNT(*) FROM studies").fetchone()[0])
        except sqlite3.DatabaseError:
            return False

    # --------------------------------------------------------------- tokens
    def _issue(self, con: sqlite3.Connection, role: str, reader_id: str | None) -> str:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = _iso(self.clock())
        con.execute(
            "UPDATE tokens SET revoked_at = ? WHERE role = ? AND reader_id IS ?"
            " AND revoked_at IS NULL",
            (now, role, reader_id),
        )
        con.execute(
            "INSERT INTO tokens (role, reader_id, token_sha256, created_at) VALUES (?, ?, ?, ?)",
            (role, reader_id, token_hash(token), now),
        )
        return token

    def issue_organiser_token(self) -> str:
        """A new organiser token (any earlier one is revoked). Shown once: only its hash is kept."""
        with self._transaction() as con:
            return self._issue(con, "organiser", None)

    def has_organiser_token(self) -> bool:
        """Whether an unrevoked organiser token exists."""
        with self._connect() as con:
            return bool(
                con.execute(
                    "SELECT 1 FROM tokens WHERE role = 'organiser' AND revoked_at IS NULL"
                ).fetchone()
            )

    def issue_reader_token(self, reader_id: str) -> str:
        """A new token for an enrolled reader (their earlier one is revoked). Shown once.

        Raises
        ------
        ReaderStudyError
            Unknown reader.
        """
        with self._transaction() as con:
            self._require_reader(con, reader_id)
            return self._issue(con, "reader", reader_id)

    def revoke_reader_token(self, reader_id: str) -> int:
        """Revoke the reader's tokens; returns how many were active. Their reads are kept."""
        with self._transaction() as con:
            self._require_reader(con, reader_id)
            cur = con.execute(
                "UPDATE tokens SET revoked_at = ? WHERE role = 'reader' AND reader_id = ?"
                " AND revoked_at IS NULL",
                (_iso(self.clock()), reader_id),
            )
            return int(cur.rowcount)

    def authenticate(self, token: str | None) -> Identity | None:
        """The identity of an active token, else None.

        Every active hash is compared with :func:`hmac.compare_digest` (no early exit).
        """
        if not token or not isinstance(token, str) or len(token) > 256:
            return None
        want = token_hash(token)
        with self._connect() as con:
            rows = con.execute(
                "SELECT role, reader_id, token_sha256 FROM tokens WHERE revoked_at IS NULL"
            ).fetchall()
        found = None
        for role, rid, h in rows:
            if hmac.compare_digest(h, want):
                found = Identity(str(role), None if rid is None else str(rid))
        return found

    # --------------------------------------------------------------- access
    def _study_row(self, con: sqlite3.Connection | None = None) -> sqlite3.Row:
        def fetch(c: sqlite3.Connection) -> sqlite3.Row:
            c.row_factory = sqlite3.Row
            row = c.execute("SELECT * FROM studies").fetchone()
            c.row_factory = None
            if row is None:
                raise ReaderStudyError(f"{self.db_path}: holds no reader study")
            return row

        if con is not None:
            return fetch(con)
        with self._connect() as c:
            return fetch(c)

    @property
    def study_id(self) -> str:
        """The study's id."""
        return str(self._study_row()["id"])

    @property
    def washout(self) -> timedelta:
        """The washout period."""
        return timedelta(days=float(self._study_row()["washout_days"]))

    @property
    def manifest_path(self) -> Path:
        """The manifest the case list came from (as recorded at creation)."""
        return Path(self._study_row()["manifest_path"])

    def info(self) -> dict:
        """The study row as a dict (id, manifest_path, manifest_sha256, n_cases, ...)."""
        return dict(self._study_row())

    def case_ids(self) -> list[str]:
        """The study's case ids in manifest order."""
        with self._connect() as con:
            return [r[0] for r in con.execute("SELECT case_id FROM study_cases ORDER BY position")]

    def readers(self) -> list[str]:
        """Reader ids in order of enrolment."""
        with self._connect() as con:
            return [
                r[0] for r in con.execute("SELECT reader_id FROM readers ORDER BY rowid").fetchall()
            ]

    def case_order(self, reader_id: str, round: int) -> list[str]:
        """The reader's stored random case order for a round."""
        _check_round(round)
        with self._connect() as con:
            self._require_reader(con, reader_id)
            return [
                r[0]
                for r in con.execute(
                    "SELECT case_id FROM reader_orders WHERE reader_id = ? AND round = ?"
                    " ORDER BY position",
                    (reader_id, round),
                )
            ]

    # -------------------------------------------------------------- readers
    def add_reader(self, reader_id: str) -> None:
        """Enrol a reader and store their random case orders for both rounds.

        The orders are permutations drawn with :func:`reader_seed` (study seed,
        reader id), so they differ between readers, differ between the two
        rounds, and are fixed once stored.

        Raises
        ------
        ReaderStudyError
            Malformed id (letters, digits, ``_ . -``; at most 64; use a
            pseudonym, not a name) or a reader already enrolled.
        """
        if not valid_reader_id(reader_id):
            raise ReaderStudyError(
                f"reader id {reader_id!r} is invalid: use 1-64 letters, digits, '_', '.', '-' "
                "(a pseudonym such as 'R01')"
            )
        with self._transaction() as con:
            study = self._study_row(con)
            if con.execute(
                "SELECT 1 FROM readers WHERE study_id = ? AND reader_id = ?",
                (study["id"], reader_id),
            ).fetchone():
                raise ReaderStudyError(f"reader {reader_id!r} is already enrolled")
            seed = reader_seed(int(study["seed"]), reader_id)
            ids = [r[0] for r in con.execute("SELECT case_id FROM study_cases ORDER BY position")]
            con.execute(
                "INSERT INTO readers VALUES (?, ?, ?, ?)",
                (study["id"], reader_id, seed, _iso(self.clock())),
            )
            rows = [
                (study["id"], reader_id, rnd, pos, cid)
                for rnd, order in case_orders(ids, seed).items()
                for pos, cid in enumerate(order)
            ]
            con.executemany("INSERT INTO reader_orders VALUES (?, ?, ?, ?, ?)", rows)

    def _require_reader(self, con: sqlite3.Connection, reader_id: str) -> None:
        if not con.execute("SELECT 1 FROM readers WHERE reader_id = ?", (reader_id,)).fetchone():
            raise ReaderStudyError(f"unknown reader {reader_id!r}; enrol them with add_reader()")

    # ------------------------------------------------------------- progress
    def _progress(self, con: sqlite3.Connection, reader_id: str) -> Progress:
        self._require_reader(con, reader_id)
        study = self._study_row(con)
        n = int(study["n_cases"])
        counts = dict(
            con.execute(
                "SELECT round, COUNT(*) FROM reads WHERE reader_id = ? GROUP BY round",
                (reader_id,),
            ).fetchall()
        )
        r1, r2 = int(counts.get(1, 0)), int(counts.get(2, 0))
        done_at = opens_at = None
        if r1 >= n:
            last = con.execute(
                "SELECT MAX(recorded_at) FROM reads WHERE reader_id = ? AND round = 1",
                (reader_id,),
            ).fetchone()[0]
            done_at = _parse(last)
            opens_at = done_at + timedelta(days=float(study["washout_days"]))
        is_open = opens_at is not None and self.clock() >= opens_at
        return Progress(reader_id, n, r1, r2, done_at, opens_at, is_open)

    def progress(self, reader_id: str) -> Progress:
        """Counts of reads per round and when round 2 opens for this reader."""
        with self._connect() as con:
            return self._progress(con, reader_id)

    def _require_round_open(self, con: sqlite3.Connection, reader_id: str, rnd: int) -> None:
        if rnd != 2:
            return
        p = self._progress(con, reader_id)
        if p.round1_done < p.n_cases:
            raise RoundNotOpenError(
                f"round 2 is closed for reader {reader_id!r}: round 1 is not finished "
                f"({p.round1_done}/{p.n_cases} cases read)"
            )
        if not p.round2_open:
            raise RoundNotOpenError(
                f"round 2 is closed for reader {reader_id!r}: the washout ends at "
                f"{p.round2_opens_at.isoformat()}"  # type: ignore[union-attr]
            )

    def next_case(self, reader_id: str, round: int) -> str | None:
        """The reader's next unread case in their stored order; None when the round is done.

        Resumes where the reader stopped: cases already read in this round are
        skipped.

        Raises
        ------
        RoundNotOpenError
            ``round == 2`` before round 1 is complete and the washout has elapsed.
        ReaderStudyError
            Unknown reader or a round other than 1 or 2.
        """
        _check_round(round)
        with self._connect() as con:
            self._require_reader(con, reader_id)
            self._require_round_open(con, reader_id, round)
            row = con.execute(
                "SELECT o.case_id FROM reader_orders o WHERE o.reader_id = ? AND o.round = ?"
                " AND NOT EXISTS (SELECT 1 FROM reads r WHERE r.reader_id = o.reader_id"
                " AND r.case_id = o.case_id AND r.round = o.round)"
                " ORDER BY o.position LIMIT 1",
                (reader_id, round),
            ).fetchone()
            return None if row is None else str(row[0])

    # --------------------------------------------------------------- record
    def record(
        self,
        reader_id: str,
        case_id: str,
        round: int,
        birads: object,
        confidence: float | None = None,
        time_taken_s: float | None = None,
        ai_score: float | None = None,
    ) -> int:
        """Append one read, committed (and synced to disk) before returning.

        Parameters
        ----------
        reader_id, case_id : str
            An enrolled reader and a case of the study.
        round : {1, 2}
            1 = without AI, 2 = with AI (stored as ``with_ai``).
        birads : str or number
            BI-RADS category, normalised with
            :func:`buscad.data.manifest.normalize_birads`; one of
            :data:`READ_CATEGORIES`.
        confidence : float, optional
            The reader's probability of malignancy, 0-100.
        time_taken_s : float, optional
            Seconds the reader spent on the case (>= 0).
        ai_score : float, optional
            The AI score shown in round 2 (kept for audit).

        Returns
        -------
        int
            The read's row id.

        Raises
        ------
        DuplicateReadError
            The reader already read this case in this round; nothing is overwritten.
        RoundNotOpenError
            Round 2 before round 1 is complete and the washout has elapsed.
        ReaderStudyError
            Unknown reader or case, invalid round, category, confidence or time.
        """
        _check_round(round)
        try:
            cat = normalize_birads(birads)
        except ValueError as exc:
            raise ReaderStudyError(f"case {case_id!r}: {exc}") from exc
        if cat not in READ_CATEGORIES:
            raise ReaderStudyError(
                f"case {case_id!r}: BI-RADS {birads!r} is not allowed in a reader study; "
                f"use one of {', '.join(READ_CATEGORIES)}"
            )
        conf = _optional_number(confidence, "confidence", case_id, 0.0, 100.0)
        secs = _optional_number(time_taken_s, "time_taken_s", case_id, 0.0, math.inf)
        ai = _optional_number(ai_score, "ai_score", case_id, -math.inf, math.inf)
        with self._transaction() as con:
            study = self._study_row(con)
            self._require_reader(con, reader_id)
            if not con.execute(
                "SELECT 1 FROM study_cases WHERE case_id = ?", (str(case_id),)
            ).fetchone():
                raise ReaderStudyError(f"case {case_id!r} is not in study {study['id']}")
            prev = con.execute(
                "SELECT birads, recorded_at FROM reads WHERE reader_id = ? AND case_id = ?"
                " AND round = ?",
                (reader_id, str(case_id), round),
            ).fetchone()
            if prev is not None:
                raise DuplicateReadError(
                    f"reader {reader_id!r} already read case {case_id!r} in round {round} "
                    f"(BI-RADS {prev[0]} at {prev[1]}); reads cannot be changed"
                )
            self._require_round_open(con, reader_id, round)
            cur = con.execute(
                "INSERT INTO reads (study_id, reader_id, case_id, round, with_ai, birads,"
                " confidence, ai_score, time_taken_s, recorded_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    study["id"],
                    reader_id,
                    str(case_id),
                    round,
                    int(round == 2),
                    cat,
                    conf,
                    ai,
                    secs,
                    _iso(self.clock()),
                ),
            )
            return int(cur.lastrowid)

    # --------------------------------------------------------------- export
    def reads(self) -> pd.DataFrame:
        """Every read, in recording order, with the columns of :data:`READS_COLUMNS`."""
        with self._connect() as con:
            df = pd.read_sql_query(f"SELECT {', '.join(READS_COLUMNS)} FROM reads ORDER BY id", con)
        df["birads"] = df["birads"].astype(str)
        return df

    def export_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write every read to CSV atomically (a reader never sees a half-written file)."""
        from buscad.utils import atomic_write_table

        return atomic_write_table(self.reads(), path)


def _check_round(rnd: object) -> None:
    if isinstance(rnd, bool) or rnd not in ROUNDS:
        raise ReaderStudyError(f"round must be 1 (without AI) or 2 (with AI), got {rnd!r}")


def _optional_number(value: object, name: str, case_id: str, lo: float, hi: float) -> float | None:
    if value is None:
        return None
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ReaderStudyError(f"case {case_id!r}: {name} {value!r} is not a number") from exc
    if not math.isfinite(x):
        raise ReaderStudyError(f"case {case_id!r}: {name} {value!r} must be a finite number")
    if not lo <= x <= hi:
        raise ReaderStudyError(f"case {case_id!r}: {name} {value!r} must lie in [{lo:g}, {hi:g}]")
    return x
