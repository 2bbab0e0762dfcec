"""The append-only reader-study store: orders, resume after a crash, refusals, export."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from buscad.data.manifest import Manifest
from buscad.reader.store import (
    READS_COLUMNS,
    DuplicateReadError,
    ReaderStudy,
    ReaderStudyError,
    RoundNotOpenError,
)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


class FakeClock:
    """A settable clock: each call returns the current time, then advances a second."""

    def __init__(self, t: datetime = T0) -> None:
        self.t = t

    def __call__(self) -> datetime:
        now = self.t
        self.t += timedelta(seconds=1)
        return now

    def advance(self, **kw: float) -> None:
        self.t += timedelta(**kw)


@pytest.fixture()
def manifest_path(tmp_path):
    n = 12
    df = pd.DataFrame(
        {
            "image_id": [f"case{i:03d}" for i in range(n)],
            "image_path": [f"img/case{i:03d}.png" for i in range(n)],
            "label": ["benign", "malignant", "benign"] * 4,
            "patient_id": [f"SECRET-PATIENT-{i}" for i in range(n)],
        }
    )
    p = tmp_path / "manifest.csv"
    Manifest(df, root=tmp_path).save(p)
    return p


@pytest.fixture()
def study(tmp_path, manifest_path):
    clock = FakeClock()
    s = ReaderStudy.create(
        tmp_path / "study.db", manifest_path, washout_days=14, seed=5, clock=clock
    )
    s.add_reader("R01")
    s.add_reader("R02")
    return s, clock


def _read_round(s: ReaderStudy, reader: str, rnd: int, limit: int | None = None) -> list[str]:
    done = []
    while (cid := s.next_case(reader, rnd)) is not None and (limit is None or len(done) < limit):
        s.record(reader, cid, rnd, "4b" if int(cid[-3:]) % 3 == 1 else "3", time_taken_s=12.5)
        done.append(cid)
    return done


def test_create_stores_case_ids_only(study, tmp_path, manifest_path):
    s, _ = study
    assert s.case_ids() == [f"case{i:03d}" for i in range(12)]
    assert s.readers() == ["R01", "R02"]
    info = s.info()
    assert info["n_cases"] == 12 and info["washout_days"] == 14 and info["seed"] == 5
    assert info["manifest_path"] == str(manifest_path.resolve())
    assert len(info["manifest_sha256"]) == 64
    # no patient identifier from the manifest anywhere in the database
    con = sqlite3.connect(tmp_path / "study.db")
    dump = "\n".join(con.iterdump())
    con.close()
    assert "SECRET-PATIENT" not in dump
    assert "case007" in dump
    with sqlite3.connect(tmp_path / "study.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_create_refuses_existing_study_and_bad_cases(study, tmp_path, manifest_path):
    with pytest.raises(ReaderStudyError, match="already holds a reader study"):
        ReaderStudy.create(tmp_path / "study.db", manifest_path)
    with pytest.raises(ReaderStudyError, match="1 case id\\(s\\) not in the manifest"):
        ReaderStudy.create(tmp_path / "b.db", manifest_path, case_ids=["case001", "nope"])
    with pytest.raises(ReaderStudyError, match="washout_days must be >= 0"):
        ReaderStudy.create(tmp_path / "c.db", manifest_path, washout_days=-1)
    with pytest.raises(ReaderStudyError, match="not found"):
        ReaderStudy.open(tmp_path / "missing.db")


def test_orders_differ_per_reader_and_round_and_are_stable(study, tmp_path):
    s, _ = study
    o1, o2 = s.case_order("R01", 1), s.case_order("R02", 1)
    assert sorted(o1) == sorted(o2) == s.case_ids()
    assert o1 != o2  # each reader has their own random order
    assert s.case_order("R01", 2) != o1  # round 2 is reshuffled
    reopened = ReaderStudy.open(tmp_path / "study.db")
    assert reopened.case_order("R01", 1) == o1
    assert reopened.case_order("R02", 2) == s.case_order("R02", 2)
    # the order derives from (study seed, reader id): a new study with the same seed agrees
    other = ReaderStudy.create(tmp_path / "again.db", s.manifest_path, seed=5)
    other.add_reader("R01")
    assert other.case_order("R01", 1) == o1


def test_reader_ids_are_validated(study):
    s, _ = study
    with pytest.raises(ReaderStudyError, match="already enrolled"):
        s.add_reader("R01")
    with pytest.raises(ReaderStudyError, match="is invalid"):
        s.add_reader("Jane Doe")
    with pytest.raises(ReaderStudyError, match="unknown reader 'R09'"):
        s.next_case("R09", 1)


def test_resume_after_crash_loses_no_read(study, tmp_path):
    s, clock = study
    first = _read_round(s, "R01", 1, limit=5)
    assert first == s.case_order("R01", 1)[:5]
    del s  # the server dies; a new process opens the same file
    s2 = ReaderStudy.open(tmp_path / "study.db", clock=clock)
    assert s2.progress("R01").round1_done == 5
    assert s2.next_case("R01", 1) == s2.case_order("R01", 1)[5]
    rest = _read_round(s2, "R01", 1)
    assert first + rest == s2.case_order("R01", 1)
    assert s2.next_case("R01", 1) is None
    # a third connection sees every read, in the reader's order
    reads = ReaderStudy.open(tmp_path / "study.db").reads()
    assert reads["case_id"].tolist() == s2.case_order("R01", 1)
    assert (reads["round"] == 1).all() and (reads["with_ai"] == 0).all()


def test_duplicate_submission_is_refused_and_not_overwritten(study):
    s, _ = study
    cid = s.next_case("R01", 1)
    s.record("R01", cid, 1, "BI-RADS 4A", confidence=40, time_taken_s=8)
    with pytest.raises(DuplicateReadError, match=f"already read case '{cid}' in round 1"):
        s.record("R01", cid, 1, "5", confidence=99, time_taken_s=3)
    reads = s.reads()
    assert len(reads) == 1
    assert reads.loc[0, "birads"] == "4a" and reads.loc[0, "confidence"] == 40
    # the other reader may read the same case
    s.record("R02", cid, 1, "3")
    assert len(s.reads()) == 2


def test_reads_table_is_append_only(study, tmp_path):
    s, _ = study
    s.record("R01", "case001", 1, "4c")
    con = sqlite3.connect(tmp_path / "study.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("UPDATE reads SET birads = '2'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("DELETE FROM reads")
    con.close()
    assert s.reads()["birads"].tolist() == ["4c"]


def test_record_validates_its_input(study):
    s, _ = study
    with pytest.raises(ReaderStudyError, match="'nope' is not in study"):
        s.record("R01", "nope", 1, "3")
    with pytest.raises(ReaderStudyError, match="round must be 1"):
        s.record("R01", "case001", 3, "3")
    with pytest.raises(ReaderStudyError, match="not a BI-RADS category"):
        s.record("R01", "case001", 1, "7")
    with pytest.raises(ReaderStudyError, match="not allowed in a reader study"):
        s.record("R01", "case001", 1, "0")
    with pytest.raises(ReaderStudyError, match="confidence 120 must lie in"):
        s.record("R01", "case001", 1, "3", confidence=120)
    with pytest.raises(ReaderStudyError, match="time_taken_s -1 must lie in"):
        s.record("R01", "case001", 1, "3", time_taken_s=-1)
    assert s.reads().empty


def test_round_two_waits_for_round_one_and_the_washout(study, tmp_path):
    s, clock = study
    _read_round(s, "R01", 1, limit=11)
    with pytest.raises(RoundNotOpenError, match="round 1 is not finished \\(11/12"):
        s.next_case("R01", 2)
    with pytest.raises(RoundNotOpenError, match="round 1 is not finished"):
        s.record("R01", "case000", 2, "3")
    _read_round(s, "R01", 1)
    p = s.progress("R01")
    assert p.round1_done == 12 and not p.round2_open
    assert p.round2_opens_at == p.round1_completed_at + timedelta(days=14)
    clock.advance(days=13, hours=23)
    with pytest.raises(RoundNotOpenError, match="the washout ends at"):
        s.record("R01", "case000", 2, "3")
    clock.advance(hours=2)
    assert s.progress("R01").round2_open
    assert s.next_case("R01", 2) == s.case_order("R01", 2)[0]
    s.record("R01", s.next_case("R01", 2), 2, "5", confidence=90, ai_score=0.93)
    # R02 has not read anything: round 2 stays closed for them
    with pytest.raises(RoundNotOpenError):
        s.next_case("R02", 2)
    r = s.reads()
    last = r.iloc[-1]
    assert last["round"] == 2 and last["with_ai"] == 1 and last["ai_score"] == pytest.approx(0.93)
    # a reopened study with a real clock agrees that the washout (in 2026) is over
    assert ReaderStudy.open(tmp_path / "study.db").progress("R01").round2_done == 1


def test_export_csv_content(study, tmp_path):
    s, _clock = study
    _read_round(s, "R01", 1, limit=3)
    s.record("R02", "case004", 1, "4", confidence=55.5, time_taken_s=20)
    out = s.export_csv(tmp_path / "out" / "reads.csv")
    df = pd.read_csv(out, dtype={"birads": str})
    assert list(df.columns) == list(READS_COLUMNS)
    assert len(df) == 4
    assert df["reader_id"].tolist() == ["R01"] * 3 + ["R02"]
    assert df["case_id"].tolist()[:3] == s.case_order("R01", 1)[:3]
    last = df.iloc[-1]
    assert (last["case_id"], last["birads"], last["confidence"], last["time_taken_s"]) == (
        "case004",
        "4",
        55.5,
        20,
    )
    assert df["study_id"].nunique() == 1 and df["study_id"].iat[0] == s.study_id
    assert pd.to_datetime(df["recorded_at"]).is_monotonic_increasing
    assert not list((tmp_path / "out").glob(".*"))  # no temporary file left behind


def test_concurrent_writers_lose_nothing(study, tmp_path):
    import threading

    s, _ = study
    errors: list[Exception] = []

    def reader_session(rid: str) -> None:
        mine = ReaderStudy.open(tmp_path / "study.db")  # its own object, like a worker process
        try:
            while (cid := mine.next_case(rid, 1)) is not None:
                mine.record(rid, cid, 1, "3", time_taken_s=1)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader_session, args=(r,)) for r in ("R01", "R02")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    reads = s.reads()
    assert len(reads) == 24
    assert reads.groupby("reader_id")["case_id"].nunique().to_dict() == {"R01": 12, "R02": 12}


def test_open_refuses_a_file_that_is_not_a_study(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ReaderStudyError, match="not a reader-study database"):
        ReaderStudy.open(junk)
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(ReaderStudyError, match=r"empty\.db: not a reader-study database"):
        ReaderStudy.open(empty)


# ------------------------------------------------------------------ tokens


def test_reader_id_is_full_matched(study):
    study, _ = study
    for bad in ("R01\n", "R01\r", " R01", "R 01", "", "R" * 65, "Jane Doe"):
        with pytest.raises(ReaderStudyError, match="pseudonym"):
            study.add_reader(bad)
    assert study.readers() == ["R01", "R02"]


def test_tokens_hashed_rotated_revoked(study, tmp_path):
    from buscad.reader.store import Identity, token_hash

    study, _ = study
    org = study.issue_organiser_token()
    tok = study.issue_reader_token("R01")
    assert len(tok) >= 43  # 32 random bytes, base64url
    assert study.authenticate(org) == Identity("organiser", None)
    assert study.authenticate(tok) == Identity("reader", "R01")
    assert study.authenticate(tok + "x") is None and study.authenticate("") is None
    raw = (tmp_path / "study.db").read_bytes()
    assert tok.encode() not in raw and org.encode() not in raw  # only hashes stored
    with sqlite3.connect(tmp_path / "study.db") as con:
        hashes = {r[0] for r in con.execute("SELECT token_sha256 FROM tokens")}
    assert token_hash(tok) in hashes
    new = study.issue_reader_token("R01")  # rotation revokes the old token
    assert study.authenticate(tok) is None and study.authenticate(new).reader_id == "R01"
    assert study.revoke_reader_token("R01") == 1
    assert study.authenticate(new) is None
    org2 = study.issue_organiser_token()
    assert study.authenticate(org) is None and study.authenticate(org2).is_organiser
    with pytest.raises(ReaderStudyError, match="unknown reader"):
        study.issue_reader_token("R99")


def test_version_1_database_is_migrated(tmp_path, manifest_path):
    db = tmp_path / "old.db"
    s = ReaderStudy.create(db, manifest_path, washout_days=0, seed=1)
    s.add_reader("R01")
    with sqlite3.connect(db) as con:  # make it look like a version-1 file
        con.execute("DROP TABLE tokens")
        con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    s = ReaderStudy.open(db)
    tok = s.issue_reader_token("R01")
    assert s.authenticate(tok).reader_id == "R01"
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("2",)
        con.execute("UPDATE meta SET value = '9' WHERE key = 'schema_version'")
    with pytest.raises(ReaderStudyError, match="newer than this buscad"):
        ReaderStudy.open(db)


def test_prepare_allows_organiser_token_before_the_study(tmp_path, manifest_path):
    db = tmp_path / "new.db"
    s = ReaderStudy.prepare(db)
    assert not s.has_study() and not s.has_organiser_token()
    org = s.issue_organiser_token()
    assert s.has_organiser_token()
    ReaderStudy.create(db, manifest_path, washout_days=0)
    assert ReaderStudy.open(db).has_study()
    assert ReaderStudy.open(db).authenticate(org).is_organiser  # the token survives creation
