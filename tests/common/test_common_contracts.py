"""Contract round-trips: every message serialises and parses back; domain ↔ proto conversions."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

import asr
from asr_mesh.services.common import convert
from asr_mesh.services.common.domain import Segment, SpeakerTurn, Word


def all_pb2_modules():
    for info in pkgutil.walk_packages(asr.__path__, "asr."):
        if info.name.endswith("_pb2"):
            yield importlib.import_module(info.name)


def test_every_service_has_versioned_package_and_unique_request_response_types():
    services = [s for m in all_pb2_modules() for s in m.DESCRIPTOR.services_by_name.values()]
    assert {s.full_name.split(".")[1] for s in services} == {
        "preprocess",
        "transcription",
        "diarization",
        "merge",
        "gateway",
    }
    for service in services:
        assert service.full_name.split(".")[2] == "v1" and service.name.endswith("Service")
        for method in service.methods:
            assert method.input_type.name == f"{method.name}Request"
            assert method.output_type.name == f"{method.name}Response"


@pytest.mark.parametrize("module", list(all_pb2_modules()), ids=lambda m: m.__name__)
def test_every_message_round_trips(module):
    for descriptor in module.DESCRIPTOR.message_types_by_name.values():
        cls = getattr(module, descriptor.name)
        message = cls()
        for field in descriptor.fields:  # set one scalar field so the bytes are not empty
            if field.type == field.TYPE_STRING and not field.is_repeated:
                setattr(message, field.name, "ação")
                break
        assert cls.FromString(message.SerializeToString()) == message


times = st.floats(min_value=0, max_value=36_000, allow_nan=False).map(lambda x: round(x, 6))
words = st.builds(
    Word,
    start=times,
    end=times,
    word=st.text(min_size=1, max_size=12),
    probability=st.floats(0, 1, width=32),
    speaker=st.sampled_from(["", "SPEAKER_00"]),
)


@given(
    st.builds(
        Segment,
        id=st.integers(0, 10_000),
        start=times,
        end=times,
        text=st.text(max_size=40),
        words=st.lists(words, max_size=5).map(tuple),
        speaker=st.sampled_from(["", "SPEAKER_01"]),
        avg_logprob=st.floats(-5, 0, width=32),
        no_speech_prob=st.floats(0, 1, width=32),
        compression_ratio=st.floats(0, 5, width=32),
    )
)
def test_segment_round_trips_through_proto(segment):
    back = convert.segment_from_proto(convert.segment_to_proto(segment))
    assert back.text == segment.text and back.id == segment.id and back.speaker == segment.speaker
    assert back.start == pytest.approx(segment.start, abs=1e-6)
    assert [w.word for w in back.words] == [w.word for w in segment.words]
    assert all(abs(a.end - b.end) <= 1e-6 for a, b in zip(back.words, segment.words))


@given(st.builds(SpeakerTurn, speaker=st.text(min_size=1, max_size=10), start=times, end=times))
def test_turn_round_trips_through_proto(turn):
    back = convert.turn_from_proto(convert.turn_to_proto(turn))
    assert back.speaker == turn.speaker
    assert back.start == pytest.approx(turn.start, abs=1e-6) and back.end == pytest.approx(
        turn.end, abs=1e-6
    )


def test_durations_keep_microseconds_and_clamp_negatives():
    assert convert.seconds(convert.duration(1.234567)) == pytest.approx(1.234567, abs=1e-9)
    assert convert.seconds(convert.duration(-3.0)) == 0.0
