"""Result cache: a finished transcription kept under a key of everything that determines it.

Key = SHA-256 over the uploaded bytes' SHA-256, the canonical options (every ChainOptions field
that can change the output, file name reduced to the recording id the documents carry), the
model identity (resolved name and weights SHA-256, as the transcription service reports them)
and `PIPELINE_VERSION`. A hit hands back the stored transcript and documents (byte for byte:
the JSON document keeps the trace id of the run that produced it) without running the chain.

Two backends with one interface (`get`/`put` of bytes): `DiskCache` (SQLite in the state
directory, the embedded default) and `RedisCache` (production, shared by every gateway
replica). Both cap their size with least-recently-used eviction and drop entries older than a
TTL. `ResultCache` in front of either turns every failure (unreachable Redis, a corrupt file, a
value that does not decode) into a miss: the cache can make a request faster, never fail it.

Pure: no gRPC here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import cast

from prometheus_client import Counter

from asr_mesh.services.common import convert
from asr_mesh.services.common.domain import MediaReport, Segment, Word
from asr_mesh.services.common.metrics import REGISTRY
from asr_mesh.services.common.options import to_flat_dict
from asr_mesh.services.gateway.pipeline import (
    ChainOptions,
    ChainResult,
    Diarization,
    Merged,
    RenderedDocument,
    Transcript,
)

log = logging.getLogger(__name__)

PIPELINE_VERSION = "2026-12-1"
"""Bump when the chain's output for the same input, options and model changes (merge rules,
document renderers, preprocessing defaults): every old entry then misses."""

CACHE_REQUESTS = Counter(
    "asr_result_cache_requests",
    "Result-cache look-ups of the gateway, by result (hit, miss, bypass).",
    ["result"],
    registry=REGISTRY,
)

ModelIdentity = Callable[[str], "tuple[str, str] | None"]
"""Requested model name ("" = default) → (resolved name, weights SHA-256), None when unknown."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(4 << 20):
            digest.update(block)
    return digest.hexdigest()


def canonical_options(options: ChainOptions) -> dict:
    """Every option that can change the output, in a stable JSON-able form (the flat form of
    `asr_mesh.services.common.options.to_flat_dict`, so keys made before the nested options still
    hit)."""
    data = to_flat_dict(options.recognition)
    # Of the file name only its stem reaches the documents, as the recording id.
    data["recording_id"] = options.recording_id
    data["formats"] = sorted(data["formats"])
    return data


def cache_key(
    input_sha256: str,
    options: ChainOptions,
    model: tuple[str, str],
    pipeline_version: str = PIPELINE_VERSION,
) -> str:
    material = json.dumps(
        {
            "input_sha256": input_sha256,
            "options": canonical_options(options),
            "model": {"name": model[0], "weights_sha256": model[1]},
            "pipeline": pipeline_version,
        },
        sort_keys=True,
        ensure_ascii=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(material.encode()).hexdigest()


# -- the stored form of a finished chain --------------------------------------------------


def encode_result(result: ChainResult) -> bytes:
    """What a job keeps and the cache stores: everything the gateway streams back, compressed."""
    data = {
        "v": 1,
        "media": asdict(result.media),
        "audio_duration": result.audio_duration,
        "transcript": {
            "language_code": result.transcript.language_code,
            "model": result.transcript.model,
        },
        "diarization": None
        if result.diarization is None
        else {
            "speaker_count": result.diarization.speaker_count,
            "backend": result.diarization.backend,
        },
        "segments": [asdict(convert.segment_from_proto(s)) for s in result.merged.segments],
        "speakers": list(result.merged.speakers),
        "documents": [asdict(d) for d in result.merged.documents],
        "seconds": result.seconds,
    }
    return zlib.compress(json.dumps(data, ensure_ascii=False).encode("utf-8"), 6)


def _segment(data: dict) -> Segment:
    words = tuple(Word(**w) for w in data.pop("words"))
    return Segment(words=words, **data)


def decode_result(blob: bytes) -> ChainResult:
    """The inverse of `encode_result` (raises on anything that is not one)."""
    data = json.loads(zlib.decompress(blob).decode("utf-8"))
    if data.get("v") != 1:
        raise ValueError(f"unknown stored result version {data.get('v')!r}")
    media_fields = {f.name for f in fields(MediaReport)}
    dia = data["diarization"]
    return ChainResult(
        media=MediaReport(**{k: v for k, v in data["media"].items() if k in media_fields}),
        audio_duration=float(data["audio_duration"]),
        transcript=Transcript([], data["transcript"]["language_code"], data["transcript"]["model"]),
        diarization=None if dia is None else Diarization([], dia["speaker_count"], dia["backend"]),
        merged=Merged(
            [convert.segment_to_proto(_segment(s)) for s in data["segments"]],
            list(data["speakers"]),
            [RenderedDocument(**d) for d in data["documents"]],
        ),
        seconds=float(data["seconds"]),
    )


# -- backends ----------------------------------------------------------------------------


class DiskCache:
    """SQLite file of entries with their size and last use; LRU beyond `max_bytes`, TTL on age."""

    def __init__(self, path: Path, max_bytes: int, ttl_s: float):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=10, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, value BLOB NOT NULL,"
                " size INTEGER NOT NULL, created REAL NOT NULL, used REAL NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS entries_used ON entries(used)")
            self._db = db
        return self._db

    def get(self, key: str) -> bytes | None:
        with self._lock:
            db = self._connect()
            row = db.execute("SELECT value, created FROM entries WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            now = time.time()
            if row[1] + self.ttl_s < now:
                db.execute("DELETE FROM entries WHERE key = ?", (key,))
                return None
            db.execute("UPDATE entries SET used = ? WHERE key = ?", (now, key))
            return bytes(row[0])

    def put(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self._lock:
            try:
                self._put(key, value)
            except (
                sqlite3.DatabaseError
            ) as exc:  # a corrupt file: start afresh rather than never cache again
                log.warning("result cache %s is unusable (%s); recreating it", self.path, exc)
                self._reset()
                self._put(key, value)

    def _put(self, key: str, value: bytes) -> None:
        db = self._connect()
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)",
                (key, value, len(value), now, now),
            )
            db.execute("DELETE FROM entries WHERE created < ?", (now - self.ttl_s,))
            total = db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0]
            if total > self.max_bytes:
                for old_key, size in db.execute(
                    "SELECT key, size FROM entries ORDER BY used"
                ).fetchall():
                    if total <= self.max_bytes:
                        break
                    db.execute("DELETE FROM entries WHERE key = ?", (old_key,))
                    total -= size
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _reset(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class RedisCache:
    """Values under `<prefix>cache:v:<key>` with a TTL; a sorted set of last uses drives LRU."""

    def __init__(self, url: str, max_bytes: int, ttl_s: float, prefix: str = "asr:"):
        import redis

        # redis-py annotates each reply for every protocol and decoding (bytes | str, lists or
        # dicts); this client speaks RESP2 without decode_responses, so replies are bytes and
        # lists, which the casts below state.
        self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=1)
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._p = f"{prefix}cache:"

    def get(self, key: str) -> bytes | None:
        value = cast(bytes | None, self._redis.get(f"{self._p}v:{key}"))
        if value is not None:
            self._redis.zadd(f"{self._p}lru", {key: time.time()})
        return value

    def put(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        pipe = self._redis.pipeline(transaction=True)
        pipe.hget(f"{self._p}size", key)
        pipe.set(f"{self._p}v:{key}", value, px=int(self.ttl_s * 1000))
        pipe.zadd(f"{self._p}lru", {key: time.time()})
        pipe.hset(f"{self._p}size", key, len(value))
        previous = pipe.execute()[0]
        total = self._redis.incrby(f"{self._p}bytes", len(value) - int(previous or 0))
        # least recently used first (entries past their TTL among them)
        while total > self.max_bytes:
            popped = cast(list[tuple[bytes, float]], self._redis.zpopmin(f"{self._p}lru"))
            if not popped:
                break
            old = popped[0][0].decode()
            pipe = self._redis.pipeline(transaction=True)
            pipe.hget(f"{self._p}size", old)
            pipe.hdel(f"{self._p}size", old)
            pipe.delete(f"{self._p}v:{old}")
            size = int(pipe.execute()[0] or 0)
            total = self._redis.decrby(f"{self._p}bytes", size)

    def close(self) -> None:
        self._redis.close()


class ResultCache:
    """The gateway's view of a backend: look-ups that never fail and count themselves."""

    def __init__(
        self,
        backend: DiskCache | RedisCache,
        model_identity: ModelIdentity,
        pipeline: str = PIPELINE_VERSION,
    ):
        """`pipeline`: PIPELINE_VERSION plus any gateway setting that changes the output for the
        same options (fan-out cuts long files into chunks: `GatewaySettings.output_variant`)."""
        self.backend = backend
        self._model_identity = model_identity
        self._pipeline = pipeline

    def key(self, input_sha256: str, options: ChainOptions) -> str | None:
        """The entry's key, or None when the model's identity cannot be learnt (no caching then)."""
        try:
            model = self._model_identity(options.recognition.transcription.model)
        except Exception as exc:
            log.warning("result cache: cannot learn the model's identity (%s); not caching", exc)
            return None
        return None if model is None else cache_key(input_sha256, options, model, self._pipeline)

    def lookup(self, key: str | None, bypass: bool = False) -> ChainResult | None:
        if bypass:
            CACHE_REQUESTS.labels("bypass").inc()
            return None
        result = None
        if key is not None:
            try:
                blob = self.backend.get(key)
                result = None if blob is None else decode_result(blob)
            except Exception as exc:  # unreachable, corrupt, undecodable: a miss, never an error
                log.warning(
                    "result cache read failed (%s: %s); treating it as a miss",
                    type(exc).__name__,
                    exc,
                )
                result = None
        CACHE_REQUESTS.labels("hit" if result is not None else "miss").inc()
        return result

    def store(self, key: str | None, result: ChainResult) -> None:
        if key is None:
            return
        try:
            self.backend.put(key, encode_result(result))
        except Exception as exc:
            log.warning("result cache write failed (%s: %s)", type(exc).__name__, exc)

    def close(self) -> None:
        try:
            self.backend.close()
        except Exception:
            pass
