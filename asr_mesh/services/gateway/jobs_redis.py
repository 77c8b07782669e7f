"""The shared job store on Redis, for several gateway replicas (`ASR_GATEWAY_JOB_STORE=redis://…`).

Redis's own primitives do the distributed part:

- the queue is a **stream** (`<p>jobs:queue`, one entry per runnable job) read by the consumer
  group `runners`; each runner thread is a consumer. `XREADGROUP >` hands a new entry to exactly
  one runner, and the entry stays in the group's pending list until that runner acknowledges it
  (`XACK`, then `XDEL`) after writing the job's final state;
- the **lease** is the pending entry's idle time: a live runner resets it every `poll_s` by
  re-claiming its own entry (`XCLAIM … 0 JUSTID`); a runner that died stops doing so, and once
  the entry has been idle for `lease_s`, `XAUTOCLAIM` gives it to another replica's runner, which
  runs the job again (at least once);
- records are JSON strings (`<p>job:<id>`) changed in `WATCH`/`MULTI` transactions; results
  (`<p>result:<id>`) are written once per finish under the job's id, so a duplicate run
  writes the same key, and both keys expire (`PXAT`) at the end of the retention time;
- listing uses sorted sets by creation time (`<p>jobs:all`, `<p>jobs:state:<state>`), cleaned
  lazily of jobs that expired.

The stream's consumer-group lag is the job backlog KEDA scales gateway replicas on
(deploy/k8s/components/jobs).
"""

from __future__ import annotations

import threading
import time
from typing import Any, cast

import redis

from asr_mesh.services.gateway.jobs import FINAL, QUEUED, RUNNING, JobRecord
from asr_mesh.services.gateway.jobs_store import _make_final

GROUP = "runners"


class RedisJobStore:
    def __init__(self, url: str, prefix: str = "asr:"):
        # redis-py annotates each reply for every protocol and decoding (bytes | str, lists or
        # dicts); this client speaks RESP2 without decode_responses, so replies are bytes and
        # lists, which the casts below state.
        self._r = redis.Redis.from_url(
            url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
        )
        self._p = prefix
        self.stream = f"{prefix}jobs:queue"
        self._entries: dict[str, bytes] = {}
        """job id → the stream entry this process claimed for it (acked when the job is final)."""
        self._lock = threading.Lock()
        self._group_ready = False
        try:  # a gateway starts (and answers UNAVAILABLE for jobs) while Redis is still down
            self._ensure_group()
        except redis.ConnectionError:
            pass

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self._r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    # -- plumbing -------------------------------------------------------------------------

    def _key(self, job_id: str) -> str:
        return f"{self._p}job:{job_id}"

    def _state_set(self, state: str) -> str:
        return f"{self._p}jobs:state:{state}"

    def _read(self, client, job_id: str) -> JobRecord | None:
        raw = client.get(self._key(job_id))
        return JobRecord.from_json(raw) if raw else None

    def _write(
        self, pipe, record: JobRecord, old_state: str | None, results: bytes | None = None
    ) -> None:
        """Queue the writes of `record` on a MULTI pipeline (state sets moved, expiry set)."""
        record.updated = time.time()
        key = self._key(record.job_id)
        if record.expires:
            pipe.set(key, record.to_json(), pxat=int(record.expires * 1000))
            if results is not None:
                pipe.set(
                    f"{self._p}result:{record.job_id}", results, pxat=int(record.expires * 1000)
                )
        else:
            pipe.set(key, record.to_json())
        if old_state != record.state:
            if old_state:
                pipe.zrem(self._state_set(old_state), record.job_id)
            pipe.zadd(self._state_set(record.state), {record.job_id: record.created})
        pipe.zadd(f"{self._p}jobs:all", {record.job_id: record.created})

    def _change(self, job_id: str, fn):
        """Run `fn(record) -> (value, write?, results)` on a fresh record inside WATCH/MULTI."""

        def attempt(pipe):
            record = self._read(pipe, job_id)
            old_state = record.state if record else None
            value, write, results = fn(record)
            pipe.multi()
            if write and record is not None:
                self._write(pipe, record, old_state, results)
            return value

        return self._r.transaction(attempt, self._key(job_id), value_from_callable=True)

    def _ack(self, entry_id: bytes | None) -> None:
        if entry_id:
            pipe = self._r.pipeline(transaction=True)
            pipe.xack(self.stream, GROUP, entry_id)
            pipe.xdel(self.stream, entry_id)
            pipe.execute()

    # -- JobStore -------------------------------------------------------------------------

    def submit(self, record: JobRecord) -> None:
        self._ensure_group()
        pipe = self._r.pipeline(transaction=True)
        self._write(pipe, record, None)
        pipe.xadd(self.stream, {"job_id": record.job_id})
        pipe.execute()

    def get(self, job_id: str) -> JobRecord | None:
        record = self._read(self._r, job_id)
        return None if record is None or record.expired() else record

    def list(
        self, state: str | None, limit: int, before: tuple[float, str] | None
    ) -> list[JobRecord]:
        index = self._state_set(state) if state else f"{self._p}jobs:all"
        found: list[JobRecord] = []
        high = before[0] if before else "+inf"
        offset, now = 0, time.time()
        while len(found) < limit:
            ids = cast(
                list[tuple[bytes, float]],
                self._r.zrevrangebyscore(
                    index, high, "-inf", start=offset, num=limit * 2, withscores=True
                ),
            )
            if not ids:
                break
            offset += len(ids)
            wanted = [
                (i.decode(), score)
                for i, score in ids
                if not before or score < before[0] or i.decode() < before[1]
            ]
            wanted.sort(key=lambda pair: (pair[1], pair[0]), reverse=True)
            raws = self._r.mget([self._key(i) for i, _ in wanted]) if wanted else []
            for (job_id, _), raw in zip(wanted, raws):
                record = JobRecord.from_json(raw) if raw else None
                if record is None or record.expired(now):
                    self._r.zrem(index, job_id)  # expired or deleted: clean the index lazily
                    offset -= 1
                elif not state or record.state == state:
                    found.append(record)
        return found[:limit]

    def claim(self, worker: str, lease_s: float) -> JobRecord | None:
        self._ensure_group()
        while True:
            # A job whose runner stopped renewing for lease_s first, then new ones.
            reply = self._r.xautoclaim(
                self.stream,
                GROUP,
                worker,
                min_idle_time=int(lease_s * 1000),
                start_id="0-0",
                count=1,
            )
            entries = [e for e in reply[1] if e and e[1]]
            if not entries:
                streams = cast(
                    list[list[Any]],
                    self._r.xreadgroup(GROUP, worker, {self.stream: ">"}, count=1),
                )
                entries = streams[0][1] if streams else []
            if not entries:
                return None
            entry_id, fields = entries[0]
            job_id = fields[b"job_id"].decode()

            def take(record: JobRecord | None):
                if record is None or record.state in FINAL:
                    return None, False, None
                record.state, record.owner = RUNNING, worker
                record.lease_until = time.time() + lease_s
                record.attempts += 1
                return record, True, None

            record = self._change(job_id, take)
            if record is None:  # cancelled while queued, or deleted: nothing to run
                self._ack(entry_id)
                continue
            with self._lock:
                self._entries[job_id] = entry_id
            return record

    def renew(self, job_id: str, worker: str, lease_s: float) -> str:
        with self._lock:
            entry_id = self._entries.get(job_id)
        if entry_id is None:
            return "lost"
        mine = self._r.xpending_range(
            self.stream, GROUP, min=entry_id, max=entry_id, count=1, consumername=worker
        )
        if not mine:  # XAUTOCLAIMed by another runner: our lease ran out
            return "lost"
        self._r.xclaim(
            self.stream, GROUP, worker, 0, [entry_id], justid=True
        )  # idle time back to 0
        record = self.get(job_id)
        if record is None or record.state != RUNNING or record.owner != worker:
            return "lost"
        return "cancel" if record.cancel_requested else "ok"

    def progress(
        self,
        job_id: str,
        worker: str,
        stage: str,
        stage_fraction: float,
        fraction: float,
        message: str,
    ) -> None:
        def update(record: JobRecord | None):
            if record is None or record.state != RUNNING or record.owner != worker:
                return None, False, None
            record.stage, record.stage_fraction, record.message = stage, stage_fraction, message
            record.fraction = max(record.fraction, fraction)
            record.lease_until = time.time()  # informational: the stream entry holds the real lease
            return None, True, None

        self._change(job_id, update)

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
        def close(record: JobRecord | None):
            if record is None or record.state in FINAL:
                return False, False, None
            _make_final(record, state, retention_s, summary, error)
            return True, True, results

        done = self._change(job_id, close)
        with self._lock:
            entry_id = self._entries.pop(job_id, None)
        self._ack(entry_id)
        return done

    def release(self, job_id: str, worker: str) -> None:
        def hand_back(record: JobRecord | None):
            if record is None or record.state != RUNNING or record.owner != worker:
                return False, False, None
            record.state, record.owner, record.lease_until = QUEUED, "", 0.0
            record.attempts = max(record.attempts - 1, 0)
            return True, True, None

        if self._change(job_id, hand_back):
            self._r.xadd(self.stream, {"job_id": job_id})  # claimable at once by any replica
        with self._lock:
            entry_id = self._entries.pop(job_id, None)
        self._ack(entry_id)

    def request_cancel(self, job_id: str, retention_s: float) -> JobRecord | None:
        def cancel(record: JobRecord | None):
            if record is None or record.expired() or record.state in FINAL:
                return record, False, None
            if record.state == QUEUED:  # its stream entry is skipped when a runner reads it
                _make_final(
                    record,
                    "cancelled",
                    retention_s,
                    None,
                    ("CANCELLED", "CANCELLED", "cancelled by a caller"),
                )
            else:
                record.cancel_requested = True
            return record, True, None

        return self._change(job_id, cancel)

    def results(self, job_id: str) -> bytes | None:
        return cast(bytes | None, self._r.get(f"{self._p}result:{job_id}"))

    def delete(self, job_id: str) -> bool:
        record = self._read(self._r, job_id)
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(self._key(job_id), f"{self._p}result:{job_id}")
        pipe.zrem(f"{self._p}jobs:all", job_id)
        if record is not None:
            pipe.zrem(self._state_set(record.state), job_id)
        return bool(pipe.execute()[0])

    def purge_expired(self) -> int:
        return 0  # keys expire by themselves (PXAT); indexes are cleaned as listing meets them

    def backlog(self) -> int:
        """Entries not yet delivered to a runner plus those being worked (what KEDA scales on)."""
        groups = {g["name"].decode(): g for g in self._r.xinfo_groups(self.stream)}
        group = groups.get(GROUP)
        return int((group.get("lag") or 0) + group.get("pending", 0)) if group else 0

    def close(self) -> None:
        self._r.close()
