"""The one error map: domain exceptions ↔ gRPC statuses with google.rpc details."""

from __future__ import annotations

import grpc
import pytest
from grpc_status import rpc_status

from asr_mesh.services.common import errors


class FakeRpcError(grpc.RpcError):
    """What a client sees: code, details and the status in trailing metadata."""

    def __init__(self, error: errors.MeshError):
        self._status = rpc_status.to_status(errors.to_status(error))

    def code(self):
        return self._status.code

    def details(self):
        return self._status.details

    def trailing_metadata(self):
        return self._status.trailing_metadata


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidAudio("the file is empty"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            errors.LimitExceeded("too long", metadata={"limit_seconds": "60"}),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (errors.UnknownModel("unknown model 'x'"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.Overloaded("queue full", retry_after_s=2.5), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.DependencyUnavailable("down"), grpc.StatusCode.UNAVAILABLE),
        (errors.DependencyFailed("died mid-request"), grpc.StatusCode.INTERNAL),
        (errors.DeadlineExceeded("slow"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.InternalError("boom"), grpc.StatusCode.INTERNAL),
    ],
)
def test_errors_round_trip_through_status(error, code):
    rpc_error = FakeRpcError(error)
    assert rpc_error.code() == code
    back = errors.from_rpc_error(rpc_error)
    assert type(back) is type(error)
    assert back.message == error.message
    assert back.metadata == error.metadata
    if isinstance(error, errors.Overloaded):
        assert back.retry_after_s == pytest.approx(2.5)


def test_bad_request_details_name_the_field():
    status = errors.to_status(errors.InvalidInput("must be mono", field="config.format.channels"))
    from google.rpc import error_details_pb2

    violations = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            violations += [(v.field, v.description) for v in request.field_violations]
    assert violations == [("config.format.channels", "must be mono")]


def test_unavailable_names_the_service():
    back = errors.from_rpc_error(
        FakeRpcError(errors.DependencyUnavailable("connection refused")), service="transcription"
    )
    assert back.message == "transcription service is unavailable: connection refused"


# ------------------------------------------------------------------ domain errors without gRPC

CORES = (
    "asr_mesh.services.common.domain",
    "asr_mesh.services.common.domain_errors",
    "asr_mesh.services.common.pcm",
    "asr_mesh.services.common.streams",
    "asr_mesh.services.common.scheduler",
    "asr_mesh.services.preprocess.core",
    "asr_mesh.services.preprocess.ffmpeg",
    "asr_mesh.services.transcription.core",
    "asr_mesh.services.transcription.guards",
    "asr_mesh.services.transcription.longform",
    "asr_mesh.services.transcription.lockstep",
    "asr_mesh.services.transcription.models",
    "asr_mesh.services.transcription.streaming",
    "asr_mesh.services.diarization.core",
    "asr_mesh.services.diarization.clustering",
    "asr_mesh.services.diarization.embedding",
    "asr_mesh.services.diarization.overlap",
    "asr_mesh.services.diarization.pyannote_backend",
    "asr_mesh.services.merge.core",
    "asr_mesh.services.merge.documents",
    "asr_mesh.services.merge.itn",
    "asr_mesh.services.merge.subtitles",
    "asr_mesh.services.gateway.availability",
    "asr_mesh.services.gateway.quota",
    "asr_mesh.services.http.openai_format",
    "asr_mesh.services.http.audio",
)
"""The pure cores: domain logic that servicers, servers and clients wrap. None may import gRPC
or Prometheus (errors carry a category, metrics arrive as callbacks)."""


def test_the_cores_import_neither_grpc_nor_prometheus():
    import subprocess
    import sys

    program = (
        "import importlib, sys\n"
        f"for name in {CORES!r}:\n"
        "    importlib.import_module(name)\n"
        "    pulled = [m for m in ('grpc', 'prometheus_client') if m in sys.modules]\n"
        "    if pulled:\n"
        "        sys.exit(f'{name} imports {pulled}')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_every_core_module_is_on_the_list():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cores = {
        ".".join(p.relative_to(root).with_suffix("").parts)
        for p in root.glob("asr_mesh/services/*/core.py")
    }
    assert cores and cores <= set(CORES)


def _all_subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_all_subclasses(sub)]
    return found


def test_every_error_class_has_a_category_with_a_status():
    from asr_mesh.services.common import domain_errors
    from asr_mesh.services.gateway import availability  # noqa: F401 - defines a MeshError of its own

    classes = [domain_errors.MeshError, *_all_subclasses(domain_errors.MeshError)]
    assert availability.ServiceNotConfigured in classes
    for cls in classes:
        assert isinstance(cls.category, domain_errors.Category), cls
        assert cls.category in errors.STATUS_OF, cls
        assert cls.reason and cls.reason.isupper(), cls
    # One table, one code per category: a status names its category back.
    assert set(errors.STATUS_OF) == set(domain_errors.Category)
    assert len(set(errors.STATUS_OF.values())) == len(errors.STATUS_OF)
    # Every class of the domain module (but the base) comes back from the wire by its reason.
    # (asr_mesh.services.common.domain_errors re-exports the client's asr_mesh.client.errors.)
    own = {c for c in classes if c.__module__ == domain_errors.MeshError.__module__} - {
        domain_errors.MeshError
    }
    assert own == set(domain_errors.KNOWN)
    assert len({c.reason for c in own}) == len(own)
    assert set(domain_errors.GENERAL) == set(domain_errors.Category)
    assert all(cls.category is cat for cat, cls in domain_errors.GENERAL.items())


def _sample(cls: type[errors.MeshError]) -> errors.MeshError:
    kw: dict = {"metadata": {"limit": cls.__name__}}
    if issubclass(cls, errors.InvalidInput):
        kw["field"] = "config.num_speakers"
    if issubclass(cls, errors.Overloaded | errors.Draining):
        kw["retry_after_s"] = 2.5
    return cls(f"{cls.__name__}: a sentence for the caller", **kw)


def _assert_same(back: errors.MeshError, sent: errors.MeshError) -> None:
    assert type(back) is type(sent)
    assert (back.message, back.metadata) == (sent.message, sent.metadata)
    assert getattr(back, "field", None) == getattr(sent, "field", None)
    assert getattr(back, "retry_after_s", None) == getattr(sent, "retry_after_s", None)


def test_every_error_round_trips_through_a_real_server_and_back():
    from concurrent import futures

    from asr_mesh.services.common.domain_errors import KNOWN

    by_name = {cls.__name__: cls for cls in KNOWN}

    def fail(request: bytes, context):
        raise _sample(by_name[request.decode()])

    server = grpc.server(
        futures.ThreadPoolExecutor(2), interceptors=[errors.ErrorMappingInterceptor()]
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "asr.test.v1.Raiser", {"Raise": grpc.unary_unary_rpc_method_handler(fail)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/asr.test.v1.Raiser/Raise")
            for name, cls in by_name.items():
                with pytest.raises(grpc.RpcError) as err:
                    call(name.encode(), timeout=10)
                sent = _sample(cls)
                assert err.value.code() == errors.STATUS_OF[cls.category], name
                _assert_same(errors.from_rpc_error(err.value), sent)
    finally:
        server.stop(0)


def test_the_event_loop_interceptor_uses_the_same_map():
    import asyncio

    from asr_mesh.services.common.aio import AioErrorMappingInterceptor
    from asr_mesh.services.common.domain_errors import KNOWN

    by_name = {cls.__name__: cls for cls in KNOWN}

    async def fail(request: bytes, context):
        raise _sample(by_name[request.decode()])

    async def main() -> dict[str, errors.MeshError]:
        server = grpc.aio.server(interceptors=[AioErrorMappingInterceptor()])
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "asr.test.v1.Raiser", {"Raise": grpc.unary_unary_rpc_method_handler(fail)}
                )
            ]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        back = {}
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary("/asr.test.v1.Raiser/Raise")
                for name in by_name:
                    try:
                        await call(name.encode(), timeout=10)
                    except grpc.aio.AioRpcError as err:
                        assert err.code() == errors.STATUS_OF[by_name[name].category], name
                        back[name] = errors.from_rpc_error(err)
        finally:
            await server.stop(0)
        return back

    back = asyncio.run(main())
    assert set(back) == set(by_name)
    for name, cls in by_name.items():
        _assert_same(back[name], _sample(cls))


def test_a_reason_that_disagrees_with_the_status_falls_back_to_the_status():
    from asr_mesh.services.common.domain_errors import Category, rebuild

    error = rebuild(Category.UNAVAILABLE, "INVALID_AUDIO", "down")  # e.g. a proxy rewrote the code
    assert type(error) is errors.DependencyUnavailable
    unknown = rebuild(Category.INVALID_INPUT, "SOMETHING_NEWER", "bad", field="config.x")
    assert type(unknown) is errors.InvalidInput and unknown.field == "config.x"
