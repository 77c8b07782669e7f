"""The embedded job store: one SQLite file in the state directory, no server to run.

Each job is a row (indexed columns for state, age, lease and expiry, plus the whole record as
JSON) with its results as a BLOB. Every change runs in a `BEGIN IMMEDIATE` transaction, so
several gateway processes on one machine may share the file; a job whose lease was not renewed
in time is claimable again, which is how a job survives a gateway killed mid-run.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from asr_mesh.services.gateway.jobs import FINAL, QUEUED, RUNNING, JobRecord

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, state TEXT NOT NULL,"
    " created REAL NOT NULL, lease_until REAL NOT NULL DEFAULT 0,"
    " expires REAL NOT NULL DEFAULT 0, data TEXT NOT NULL, results BLOB)",
    "CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created, job_id)",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, created)",
)


class SqliteJobStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            self.path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process kill
        for statement in _SCHEMA:
            self._db.execute(statement)
        self._lock = threading.Lock()

    # -- plumbing -------------------------------------------------------------------------

    def _tx(self, fn: Callable[[sqlite3.Connection], object]):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                value = fn(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return value

    @staticmethod
    def _load(db: sqlite3.Connection, job_id: str) -> JobRecord | None:
        row = db.execute("SELECT data FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return JobRecord.from_json(row[0]) if row else None

    @staticmethod
    def _save(db: sqlite3.Connection, record: JobRecord, results: bytes | None = None) -> None:
        record.updated = time.time()
        db.execute(
            "INSERT INTO jobs (job_id, state, created, lease_until, expires, data)"
            " VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(job_id) DO UPDATE SET state = excluded.state,"
            " lease_until = excluded.lease_until, expires = excluded.expires, data = excluded.data",
            (
                record.job_id,
                record.state,
                record.created,
                record.lease_until,
                record.expires,
                record.to_json(),
            ),
        )
        if results is not None:
            db.execute("UPDATE jobs SET results = ? WHERE job_id = ?", (results, record.job_id))

    # -- JobStore -------------------------------------------------------------------------

    def submit(self, record: JobRecord) -> None:
        self._tx(lambda db: self._save(db, record))

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            record = self._load(self._db, job_id)
        return None if record is None or record.expired() else record

    def list(
        self, state: str | None, limit: int, before: tuple[float, str] | None
    ) -> list[JobRecord]:
        where = ["(expires = 0 OR expires > ?)"]
        args: list[float | str] = [time.time()]
        if state:
            where.append("state = ?")
            args.append(state)
        if before:
            where.append("(created < ? OR (created = ? AND job_id < ?))")
            args += [before[0], before[0], before[1]]
        sql = (
            f"SELECT data FROM jobs WHERE {' AND '.join(where)}"
            " ORDER BY created DESC, job_id DESC LIMIT ?"
        )
        with self._lock:
            rows = self._db.execute(sql, (*args, limit)).fetchall()
        return [JobRecord.from_json(row[0]) for row in rows]

    def claim(self, worker: str, lease_s: float) -> JobRecord | None:
        def take(db: sqlite3.Connection) -> JobRecord | None:
            now = time.time()
            row = db.execute(
                "SELECT data FROM jobs WHERE state = ? OR (state = ? AND lease_until < ?)"
                " ORDER BY created LIMIT 1",
                (QUEUED, RUNNING, now),
            ).fetchone()
            if row is None:
                return None
            record = JobRecord.from_json(row[0])
            record.state, record.owner, record.lease_until = RUNNING, worker, now + lease_s
            record.attempts += 1
            self._save(db, record)
            return record

        return self._tx(take)

    def renew(self, job_id: str, worker: str, lease_s: float) -> str:
        def extend(db: sqlite3.Connection) -> str:
            record = self._load(db, job_id)
            if record is None or record.state != RUNNING or record.owner != worker:
                return "lost"
            record.lease_until = time.time() + lease_s
            self._save(db, record)
            return "cancel" if record.cancel_requested else "ok"

        return self._tx(extend)

    def progress(
        self,
        job_id: str,
        worker: str,
        stage: str,
        stage_fraction: float,
        fraction: float,
        message: str,
    ) -> None:
        def update(db: sqlite3.Connection) -> None:
            record = self._load(db, job_id)
            if record is None or record.state != RUNNING or record.owner != worker:
                return
            record.stage, record.stage_fraction, record.message = stage, stage_fraction, message
            record.fraction = max(record.fraction, fraction)
            self._save(db, record)

        self._tx(update)

    def finish(
        self,
        job_id: str,
        worker: str,
        state: str,
        *,
        retention_s: float,
        summary: dict | None = None,
        results: bytes | None = None,
        error: tuple[str, str, str] | None = None,
    ) -> bool:
        def close(db: sqlite3.Connection) -> bool:
            record = self._load(db, job_id)
            if record is None or record.state in FINAL:
                return False
            _make_final(record, state, retention_s, summary, error)
            self._save(db, record, results)
            return True

        return self._tx(close)

    def release(self, job_id: str, worker: str) -> None:
        def hand_back(db: sqlite3.Connection) -> None:
            record = self._load(db, job_id)
            if record is None or record.state != RUNNING or record.owner != worker:
                return
            record.state, record.owner, record.lease_until = QUEUED, "", 0.0
            record.attempts = max(record.attempts - 1, 0)  # a drain is not a failed attempt
            self._save(db, record)

        self._tx(hand_back)

    def request_cancel(self, job_id: str, retention_s: float) -> JobRecord | None:
        def cancel(db: sqlite3.Connection) -> JobRecord | None:
            record = self._load(db, job_id)
            if record is None or record.expired() or record.state in FINAL:
                return record
            if record.state == QUEUED:
                _make_final(
                    record,
                    "cancelled",
                    retention_s,
                    None,
                    ("CANCELLED", "CANCELLED", "cancelled by a caller"),
                )
            else:
                record.cancel_requested = True
            self._save(db, record)
            return record

        return self._tx(cancel)

    def results(self, job_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT results, expires FROM jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
        if row is None or row[0] is None or (row[1] and row[1] <= time.time()):
            return None
        return bytes(row[0])

    def delete(self, job_id: str) -> bool:
        return self._tx(
            lambda db: db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,)).rowcount > 0
        )

    def purge_expired(self) -> int:
        return self._tx(
            lambda db: (
                db.execute(
                    "DELETE FROM jobs WHERE expires > 0 AND expires <= ?", (time.time(),)
                ).rowcount
            )
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _make_final(
    record: JobRecord,
    state: str,
    retention_s: float,
    summary: dict | None,
    error: tuple[str, str, str] | None,
) -> None:
    record.state, record.owner, record.lease_until = state, "", 0.0
    record.expires = time.time() + retention_s
    if state == "succeeded":
        record.fraction, record.stage_fraction = 1.0, 1.0
    if summary is not None:
        record.summary = summary
    if error is not None:
        record.error_code, record.error_reason, record.error_message = error
