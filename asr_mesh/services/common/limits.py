"""Bounded cost per request: caps on the options that multiply decoding work, in one place.

A caller could otherwise ask for beam 20, best_of 20, eleven temperature steps and a
5,000-character prompt, and hold a transcription worker for minutes on seconds of audio. The
caps apply to every request message of every service by field name (`beam_size`, `best_of`,
`temperatures`, `initial_prompt`, `hotwords`, `num_speakers`, `min_speakers`, `max_speakers`,
`speaker_names`), on the message itself and on the messages it carries (the `config` of a
stream's first message), so the gateway and the services behind it refuse the same things: a
direct call to the transcription service with beam 20 is refused exactly like one through the
gateway. A violation is INVALID_ARGUMENT (reason LIMIT_EXCEEDED) naming the field, the cap, the
limit and the setting that raises it.

`CapsInterceptor` (sync servers) and `AioCapsInterceptor` (grpc.aio) apply `check_message` to
every request message of `/asr.*` methods; health and reflection are left alone.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from asr_mesh.services.common.errors import LimitExceeded
from asr_mesh.services.common.handlers import rewrapped


@dataclass(frozen=True)
class RequestCaps:
    """The caps (defaults: README "Bounded cost per request"); `setting_prefix` names the env."""

    beam_size: int = 10
    best_of: int = 10
    temperatures: int = 6
    prompt_chars: int = 1000
    hotword_items: int = 100
    hotwords_chars: int = 2000
    speakers: int = 20
    setting_prefix: str = "ASR_"

    @classmethod
    def from_settings(cls, settings: Any) -> RequestCaps:
        return cls(
            beam_size=settings.cap_beam_size,
            best_of=settings.cap_best_of,
            temperatures=settings.cap_temperatures,
            prompt_chars=settings.cap_prompt_chars,
            hotword_items=settings.cap_hotword_items,
            hotwords_chars=settings.cap_hotwords_chars,
            speakers=settings.cap_speakers,
            setting_prefix=str(settings.model_config.get("env_prefix", "ASR_")),
        )

    def _refuse(self, field: str, what: str, cap: str, limit: int, unit: str = "") -> LimitExceeded:
        setting = f"{self.setting_prefix}CAP_{cap.upper()}"
        return LimitExceeded(
            f"{what} is above the cap of {limit}{unit} on {cap} ({setting}): it bounds the work "
            "one request may cost",
            field=f"config.{field}",
            metadata={"cap": cap, "limit": str(limit), "setting": setting},
        )

    # One check per field name; each takes the field's value.

    def beam_size_(self, value: int) -> None:
        if value > self.beam_size:
            raise self._refuse("beam_size", f"beam_size {value}", "beam_size", self.beam_size)

    def best_of_(self, value: int) -> None:
        if value > self.best_of:
            raise self._refuse("best_of", f"best_of {value}", "best_of", self.best_of)

    def temperatures_(self, value: Any) -> None:
        if len(value) > self.temperatures:
            raise self._refuse(
                "temperatures",
                f"a schedule of {len(value)} temperatures",
                "temperatures",
                self.temperatures,
                " steps",
            )

    def initial_prompt_(self, value: str) -> None:
        if len(value) > self.prompt_chars:
            raise self._refuse(
                "initial_prompt",
                f"an initial_prompt of {len(value)} characters",
                "prompt_chars",
                self.prompt_chars,
                " characters",
            )

    def hotwords_(self, value: str) -> None:
        if len(value) > self.hotwords_chars:
            raise self._refuse(
                "hotwords",
                f"hotwords of {len(value)} characters",
                "hotwords_chars",
                self.hotwords_chars,
                " characters",
            )
        items = len(value.split())
        if items > self.hotword_items:
            raise self._refuse(
                "hotwords", f"{items} hotwords", "hotword_items", self.hotword_items, " words"
            )

    def _speakers(self, name: str, value: int) -> None:
        if value > self.speakers:
            raise self._refuse(name, f"{name} {value}", "speakers", self.speakers, " speakers")

    def num_speakers_(self, value: int) -> None:
        self._speakers("num_speakers", value)

    def min_speakers_(self, value: int) -> None:
        self._speakers("min_speakers", value)

    def max_speakers_(self, value: int) -> None:
        self._speakers("max_speakers", value)

    def speaker_names_(self, value: Any) -> None:
        if len(value) > self.speakers:
            raise self._refuse(
                "speaker_names",
                f"{len(value)} speaker_names",
                "speakers",
                self.speakers,
                " speakers",
            )

    def check(self, message: Message) -> None:
        """Refuse `message` (and the messages it directly holds) when a field passes its cap."""
        fields, nested = _plan(message.DESCRIPTOR)
        for name in fields:
            getattr(self, f"{name}_")(getattr(message, name))
        for name in nested:
            if message.HasField(name):
                self.check(getattr(message, name))


CAPPED_FIELDS = (
    "beam_size",
    "best_of",
    "temperatures",
    "initial_prompt",
    "hotwords",
    "num_speakers",
    "min_speakers",
    "max_speakers",
    "speaker_names",
)


@functools.cache
def _plan(descriptor: Descriptor) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(capped fields of this message type, singular message fields that may hold more)."""
    fields = tuple(name for name in CAPPED_FIELDS if name in descriptor.fields_by_name)
    nested = tuple(
        f.name
        for f in descriptor.fields
        if f.type == FieldDescriptor.TYPE_MESSAGE
        and not f.is_repeated
        and _could_hold_caps(f.message_type)
    )
    return fields, nested


@functools.cache
def _could_hold_caps(descriptor: Descriptor) -> bool:
    return any(name in descriptor.fields_by_name for name in CAPPED_FIELDS)


def _guarded_method(method: str) -> bool:
    return method.startswith("/asr.")


def _rebuild(handler: Any, wrap: Callable[[Callable, bool], Callable]) -> Any:
    return rewrapped(handler, lambda behavior, kind: wrap(behavior, handler.request_streaming))


class CapsInterceptor(grpc.ServerInterceptor):
    """Sync servers: `RequestCaps.check` on every request message; a violation is raised as
    `LimitExceeded` from the handler (so the error map turns it into INVALID_ARGUMENT)."""

    def __init__(self, caps: RequestCaps):
        self._caps = caps

    def _checked(self, messages: Iterator[Message]) -> Iterator[Message]:
        for message in messages:
            self._caps.check(message)
            yield message

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or not _guarded_method(handler_call_details.method):
            return handler

        def wrap(behavior: Callable, request_streaming: bool) -> Callable:
            if request_streaming:
                return lambda requests, context: behavior(self._checked(requests), context)

            def unary(request: Message, context: grpc.ServicerContext) -> Any:
                self._caps.check(request)
                return behavior(request, context)

            return unary

        return _rebuild(handler, wrap)


class AioCapsInterceptor(grpc.aio.ServerInterceptor):
    """grpc.aio servers: the same checks; a violation aborts the call with INVALID_ARGUMENT
    (and the google.rpc details) itself, whatever error mapping the server has."""

    def __init__(self, caps: RequestCaps):
        self._caps = caps

    async def _abort(self, context: grpc.aio.ServicerContext, error: LimitExceeded) -> None:
        from grpc_status import rpc_status

        from asr_mesh.services.common.errors import to_status

        status = rpc_status.to_status(to_status(error))
        await context.abort(status.code, status.details, status.trailing_metadata)

    async def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or not _guarded_method(handler_call_details.method):
            return handler
        caps, abort = self._caps, self._abort

        def wrap(behavior: Callable, request_streaming: bool) -> Callable:
            def checked(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Message]:
                async def gen() -> AsyncIterator[Message]:
                    async for message in requests:
                        try:
                            caps.check(message)
                        except LimitExceeded as error:
                            await abort(context, error)
                        yield message

                return gen()

            async def first(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if request_streaming:
                    return checked(request, context)
                try:
                    caps.check(request)
                except LimitExceeded as error:
                    await abort(context, error)
                return request

            if inspect.isasyncgenfunction(behavior):

                async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
                    async for response in behavior(await first(request, context), context):
                        yield response

                return streaming

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                result = behavior(await first(request, context), context)
                return await result if inspect.isawaitable(result) else result

            return unary

        return _rebuild(handler, wrap)
