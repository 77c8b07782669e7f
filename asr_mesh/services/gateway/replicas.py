"""The transcription replicas a gateway can reach one by one, for fanning a file out.

The gateway's ordinary transcription channel balances calls round-robin over every address of
the service, but hides which replica served a call. Fan-out needs more: a window that failed on
one replica is retried on another, a replica that answered RESOURCE_EXHAUSTED is left alone for
a moment, and an error names the replica. So this pool keeps one channel per replica and counts
the windows each is decoding (hand-written: gRPC's load-balancing policies expose neither the
chosen backend nor per-backend load to the caller).

Replicas come from `ASR_GATEWAY_TRANSCRIPTION_ADDRESS`: a comma-separated list of host:port (the
local mesh, `asr serve --transcription-replicas N`), or one name whose DNS answer lists every
replica (a headless Kubernetes Service, `dns:///transcription.asr.svc:50051`), resolved again
every `refresh_s` so replicas that come and go are seen.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc

from asr.transcription.v1 import transcription_service_pb2_grpc as tr_grpc
from asr_mesh.services.common.security import open_channel
from asr_mesh.services.common.telemetry import traced_channel

Resolver = Callable[[str, int], list[str]]


def resolve_ipv4(host: str, port: int) -> list[str]:
    """Every IPv4 address `host` resolves to, sorted (a headless Service: one per ready pod)."""
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    return sorted({str(info[4][0]) for info in infos})


def split_target(target: str) -> tuple[list[str], str | None]:
    """(fixed replica addresses, DNS name to resolve or None) from the configured target."""
    target = target.strip()
    if target.startswith("dns:"):
        target = target.split("/")[-1]  # dns:///name:port or dns://authority/name:port
        return [], target
    parts = [p.strip() for p in target.split(",") if p.strip()]
    if len(parts) == 1 and not _is_ip_literal(parts[0].rsplit(":", 1)[0]):
        return [], parts[0]
    return parts, None


def _is_ip_literal(host: str) -> bool:
    try:
        socket.inet_pton(
            socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET, host.strip("[]")
        )
        return True
    except OSError:
        return False


def round_robin_target(target: str) -> str:
    """A gRPC target for one round-robin channel over the same replicas (non-fan-out calls)."""
    fixed, name = split_target(target)
    if name is not None or len(fixed) == 1:
        return target
    return (
        "ipv4:" + ",".join(fixed)
        if all(_is_ip_literal(a.rsplit(":", 1)[0]) for a in fixed)
        else fixed[0]
    )


class ReplicaPool:
    """One traced channel per transcription replica, and how many windows each is decoding."""

    def __init__(
        self,
        target: str,
        options: Iterable[tuple[str, Any]] = (),
        credentials: grpc.ChannelCredentials | None = None,
        *,
        refresh_s: float = 10.0,
        resolver: Resolver = resolve_ipv4,
    ):
        self._fixed, self._name = split_target(target)
        self._options = list(options)
        self._credentials = credentials
        self._refresh_s = refresh_s
        self._resolver = resolver
        self._lock = threading.Condition()
        self._channels: dict[str, tuple[grpc.Channel, tr_grpc.TranscriptionServiceStub]] = {}
        self._inflight: dict[str, int] = {}
        self._resting_until: dict[str, float] = {}
        self._resolved: list[str] = []
        self._resolved_at = -1e18
        self._turn = 0

    def replicas(self) -> list[str]:
        """The replicas now (a DNS name is resolved again when its answer is `refresh_s` old)."""
        if self._name is None:
            return list(self._fixed)
        now = time.monotonic()
        with self._lock:
            if now - self._resolved_at >= self._refresh_s or not self._resolved:
                host, _, port = self._name.rpartition(":")
                found = [f"{ip}:{port}" for ip in self._resolver(host, int(port))]
                # A failed lookup keeps the last answer: a DNS hiccup must not empty the pool.
                self._resolved = found or self._resolved
                self._resolved_at = now
            return list(self._resolved) or [self._name]

    def stub(self, replica: str) -> tr_grpc.TranscriptionServiceStub:
        with self._lock:
            if replica not in self._channels:
                options = list(self._options)
                if self._credentials is not None and self._name is not None:
                    # Connected by IP; the certificate names the service.
                    options.append(("grpc.ssl_target_name_override", self._name.rpartition(":")[0]))
                channel = open_channel(replica, options, self._credentials)
                self._channels[replica] = (
                    channel,
                    tr_grpc.TranscriptionServiceStub(traced_channel(channel)),
                )
            return self._channels[replica][1]

    def acquire(self, avoid: Iterable[str] = ()) -> str:
        """The replica for the next window: the least busy, not resting, not in `avoid` (the
        replicas this window already failed on) while another exists; ties taken in turn."""
        replicas, avoid = self.replicas(), set(avoid)
        with self._lock:
            candidates = [r for r in replicas if r not in avoid] or replicas
            now = time.monotonic()
            awake = [r for r in candidates if self._resting_until.get(r, 0.0) <= now] or candidates
            self._turn += 1
            order = {r: (k - self._turn) % len(awake) for k, r in enumerate(awake)}
            choice = min(awake, key=lambda r: (self._inflight.get(r, 0), order[r]))
            self._inflight[choice] = self._inflight.get(choice, 0) + 1
            return choice

    def release(self, replica: str, rest_s: float = 0.0) -> None:
        """A window left `replica`; `rest_s` > 0 keeps new windows off it that long (it said it
        was full, or it failed)."""
        with self._lock:
            self._inflight[replica] = max(0, self._inflight.get(replica, 0) - 1)
            if rest_s > 0:
                self._resting_until[replica] = time.monotonic() + rest_s

    def busy(self) -> dict[str, int]:
        with self._lock:
            return {r: n for r, n in self._inflight.items() if n}

    def close(self) -> None:
        with self._lock:
            for channel, _ in self._channels.values():
                channel.close()
            self._channels.clear()
