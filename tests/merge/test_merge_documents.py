"""Pure-core tests of the documents: SRT/VTT parsed back with `srt` and `webvtt-py`, JSON, TXT, RTTM."""

from __future__ import annotations

import html
import io
import json
import re
import unicodedata

import pytest
import srt
import webvtt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asr_mesh.services.common.domain import Segment, SpeakerTurn, Word
from asr_mesh.services.merge.core import (
    DocumentInfo,
    MergeOptions,
    MergeResult,
    OutputFormat,
    merge,
)
from asr_mesh.services.merge.documents import render_documents, render_json, render_rttm, render_txt
from asr_mesh.services.merge.subtitles import (
    build_cues,
    layout_lines,
    render_srt,
    render_vtt,
    srt_prefix,
    srt_safe,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
OPTIONS = MergeOptions()
NO_INFO = DocumentInfo()
SRT_TIME = re.compile(r"^\d{2}:\d{2}:\d{2},\d{3} --> \d{2}:\d{2}:\d{2},\d{3}$")
VTT_TIME = re.compile(r"^\d{2}:\d{2}:\d{2}\.\d{3} --> \d{2}:\d{2}:\d{2}\.\d{3}$")
PREFIX = re.compile(r"^\[([^\]]+)\]\s*")


def W(start: float, end: float, text: str) -> Word:
    return Word(start=start, end=end, word=text, probability=0.9)


def T(speaker: str, start: float, end: float) -> SpeakerTurn:
    return SpeakerTurn(speaker=speaker, start=start, end=end)


def sentence(start: float, text: str, step: float = 0.4, sid: int = 0) -> Segment:
    words = tuple(
        W(start + i * step, start + (i + 1) * step, w) for i, w in enumerate(text.split())
    )
    return Segment(sid, words[0].start, words[-1].end, text, words)


# ---- checks shared by the example and property tests ----------------------------------------


def check_srt(
    content: str, result: MergeResult, info: DocumentInfo = NO_INFO, options: MergeOptions = OPTIONS
) -> list[srt.Subtitle]:
    """Parse with the srt library and check every broadcast rule; returns the subtitles."""
    subs = list(srt.parse(content))
    assert [s.index for s in subs] == list(range(1, len(subs) + 1))
    for line in content.splitlines():
        if "-->" in line:
            assert SRT_TIME.match(line), line
    shown, shown_speakers = [], []
    for i, sub in enumerate(subs):
        lines = sub.content.split("\n")
        assert 1 <= len(lines) <= options.max_lines
        assert all(len(line) <= options.max_line_chars for line in lines), lines
        _check_timing(i, subs, sub.start.total_seconds(), sub.end.total_seconds(), options)
        text = " ".join(lines)
        match = PREFIX.match(text)
        speaker = match.group(1) if match else ""
        words = text[match.end() :].split() if match else text.split()
        shown += words
        shown_speakers += [speaker] * len(words)
    prefix = srt_prefix(info, options)
    _check_words(
        result,
        shown,
        shown_speakers,
        word_shown=srt_safe,
        speaker_shown=lambda label: prefix(label)[1:-1] if label else "",
    )
    return subs


def check_vtt(
    content: str, result: MergeResult, info: DocumentInfo = NO_INFO, options: MergeOptions = OPTIONS
) -> list:
    """Parse with webvtt-py and check every broadcast rule; returns the captions."""
    assert content.startswith("WEBVTT\n\n")
    captions = list(webvtt.from_buffer(io.StringIO(content)))
    assert [c.identifier for c in captions] == [str(i) for i in range(1, len(captions) + 1)]
    for line in content.splitlines():
        if "-->" in line:
            assert VTT_TIME.match(line), line
    shown, shown_speakers = [], []
    for i, cap in enumerate(captions):
        lines = [html.unescape(line) for line in cap.text.split("\n")]
        assert 1 <= len(lines) <= options.max_lines
        assert all(len(line) <= options.max_line_chars for line in lines), lines
        _check_timing(
            i,
            captions,
            cap.start_time.in_milliseconds() / 1000,
            cap.end_time.in_milliseconds() / 1000,
            options,
        )
        words = " ".join(lines).split()
        shown += words
        shown_speakers += [html.unescape(cap.voice or "")] * len(words)
    _check_words(
        result,
        shown,
        shown_speakers,
        speaker_shown=lambda label: info.display_name(label) if label else "",
    )
    return captions


def _times(cue) -> tuple[float, float]:
    if isinstance(cue, srt.Subtitle):
        return cue.start.total_seconds(), cue.end.total_seconds()
    return cue.start_time.in_milliseconds() / 1000, cue.end_time.in_milliseconds() / 1000


def _check_timing(i: int, cues: list, start: float, end: float, options: MergeOptions) -> None:
    assert end > start
    assert end - start <= options.max_cue_s + 1e-9
    if i > 0:
        assert start >= _times(cues[i - 1])[1] - 1e-9, "cues never overlap"
    if end - start < options.min_cue_s - 1e-9:
        # Short only where the next cue starts right away (no silence to extend into) and the
        # previous one ends right before it (no silence to start earlier into).
        assert i + 1 < len(cues) and abs(_times(cues[i + 1])[0] - end) < 1e-9
        assert i == 0 and start < 1e-9 or i > 0 and abs(_times(cues[i - 1])[1] - start) < 1e-9


def _check_words(
    result: MergeResult,
    shown: list[str],
    shown_speakers: list[str],
    word_shown=lambda w: w,
    speaker_shown=lambda s: s,
) -> None:
    words = [w for s in result.segments for w in s.words]
    # A word may hold a space after ITN ("R$ 1.250,00"); test_merge_itn checks it stays in one cue.
    parts = [(part, w.speaker) for w in words for part in word_shown(w.word).split()]
    assert shown == [p for p, _ in parts], "every word once, in order, never split"
    # A cue shows one speaker, and it is the speaker of each of its words.
    assert shown_speakers == [speaker_shown(s) for _, s in parts]


# ---- subtitles: property test ---------------------------------------------------------------

_VOCAB = [
    "olá",
    "você",
    "ação",
    "coração",
    "não",
    "São",
    "Paulo",
    "amanhã",
    "até",
    "pé",
    "é",
    "informação",
    "exceção",
    "pão",
    "Sr.",
    "bem?",
    "sim!",
    "então…",
    "fim.",
    "vovó,",
    "P&D",
    "<b>",
    "-->",
    "extraordinariamente",
    "constitucionalíssimo",
]


@st.composite
def conversations(draw):
    segments, t = [], 0.0
    for sid in range(draw(st.integers(1, 5))):
        words = []
        for _ in range(draw(st.integers(1, 25))):
            t += draw(st.integers(0, 130)) / 100
            dur = draw(st.integers(0, 150)) / 100
            words.append(W(t, t + dur, draw(st.sampled_from(_VOCAB))))
            t += dur
        segments.append(Segment(sid, words[0].start, words[-1].end, "", tuple(words)))
    turns, u = [], 0.0
    while u < t:
        dur = draw(st.integers(50, 800)) / 100
        turns.append(T(draw(st.sampled_from(["ana", "bia", "caio"])), u, u + dur))
        u += dur + draw(st.integers(0, 100)) / 100
    return segments, draw(st.one_of(st.just([]), st.just(turns)))


@FAST
@given(conversation=conversations())
def test_subtitles_follow_broadcast_rules(conversation):
    segments, turns = conversation
    result = merge(segments, turns, OPTIONS)
    info = DocumentInfo()
    subs = check_srt(render_srt(result.segments, info, OPTIONS), result)
    caps = check_vtt(render_vtt(result.segments, info, OPTIONS), result)
    assert subs and caps


# ---- subtitles: examples --------------------------------------------------------------------


def test_long_sentence_is_cut_into_balanced_two_line_cues():
    text = (
        "A reunião de amanhã vai discutir a informação sobre a exceção que o coração da "
        "administração pediu para a população de São Paulo ainda nesta semana."
    )
    result = merge([sentence(0, text, step=0.25)], [T("x", 0, 60)])
    subs = check_srt(render_srt(result.segments, DocumentInfo(), OPTIONS), result)
    assert len(subs) >= 3
    first = subs[0].content.split("\n")
    assert first[0].startswith("[SPEAKER_00] ") and len(first) == 2
    assert abs(len(first[0]) - len(first[1])) <= 12, "lines are balanced"
    check_vtt(render_vtt(result.segments, DocumentInfo(), OPTIONS), result)


def test_cue_never_lasts_more_than_seven_seconds():
    slow = sentence(0, "isso é muito devagar mesmo", step=2.0)
    result = merge([slow])
    cues = build_cues(result.segments, OPTIONS)
    assert [c.words for c in cues] == [("isso", "é", "muito"), ("devagar", "mesmo")]
    assert all(c.end_ms - c.start_ms <= 7000 for c in cues)


def test_short_cues_extend_into_silence_but_not_over_the_next_or_past_the_audio():
    segs = [
        sentence(0.0, "Sim.", 0.2, 0),
        sentence(0.5, "Não.", 0.2, 1),
        sentence(5.0, "Talvez.", 0.3, 2),
    ]
    result = merge(segs)
    cues = build_cues(result.segments, OPTIONS, audio_duration=5.5)
    # The last cue cannot grow past the audio's end, so it starts earlier, into the silence.
    assert [(c.start_ms, c.end_ms) for c in cues] == [(0, 500), (500, 1200), (4800, 5500)]
    check_srt(render_srt(result.segments, DocumentInfo(duration=0), OPTIONS), result)


def test_a_last_word_at_the_very_end_of_the_file_still_lasts_the_minimum():
    segs = [sentence(10.0, "Bom dia.", 0.5, 0), sentence(30.10, "Obrigada.", 0.08, 1)]
    result = merge(segs)
    cues = build_cues(result.segments, OPTIONS, audio_duration=30.18)
    assert [(c.start_ms, c.end_ms) for c in cues][-1] == (29480, 30180)
    assert all(c.end_ms - c.start_ms >= 700 for c in cues)
    check_srt(render_srt(result.segments, DocumentInfo(duration=30.18), OPTIONS), result)


def test_overlapping_word_times_do_not_give_overlapping_cues():
    segs = [
        Segment(0, 0, 2, "", (W(0, 1, "Primeira."), W(0.9, 2.0, "Segunda."))),
        Segment(1, 1.5, 3, "", (W(1.5, 3, "Terceira."),)),
    ]
    result = merge(segs)
    check_vtt(render_vtt(result.segments, DocumentInfo(), OPTIONS), result)
    check_srt(render_srt(result.segments, DocumentInfo(), OPTIONS), result)


def test_speaker_names_are_shown_and_long_names_shortened():
    result = merge(
        [sentence(0, "Bom dia a todos."), sentence(3, "Olá!", sid=1)],
        [T("a", 0, 2.5), T("b", 2.5, 5)],
    )
    info = DocumentInfo(
        speaker_names={
            "SPEAKER_00": "Maria  da Conceição",
            "SPEAKER_01": "Joaquim José da Silva Xavier Tiradentes",
            "SPEAKER_07": "ninguém",
        }
    )
    content = render_srt(result.segments, info, OPTIONS)
    assert "[Maria da Conceição] Bom dia a todos." in content
    assert "[Joaquim José da…] Olá!" in content
    check_srt(content, result, info)
    vtt = render_vtt(result.segments, info, OPTIONS)
    assert "<v Maria da Conceição>Bom dia a todos." in vtt
    assert [c.voice for c in webvtt.from_buffer(io.StringIO(vtt))] == [
        "Maria da Conceição",
        "Joaquim José da Silva Xavier Tiradentes",
    ]
    check_vtt(vtt, result, info)


def test_markup_in_words_is_escaped_in_vtt():
    result = merge([sentence(0, "P&D <b> --> ok")], [T("a", 0, 3)])
    vtt = render_vtt(result.segments, DocumentInfo(), OPTIONS)
    assert "P&amp;D &lt;b&gt; --&gt; ok" in vtt
    check_vtt(vtt, result)


def test_overlong_word_gets_a_cue_of_its_own():
    word = "https://exemplo.com.br/uma/ligação/muito/comprida/mesmo"
    result = merge([sentence(0, f"veja {word} agora")])
    cues = build_cues(result.segments, OPTIONS)
    assert [c.words for c in cues] == [("veja",), (word,), ("agora",)]


def test_segments_without_words_are_subtitled_with_spread_timings():
    result = merge([Segment(0, 0, 12, "texto " * 30, ())], [T("a", 0, 12)])
    cues = build_cues(result.segments, OPTIONS)
    assert len(cues) > 1 and cues[0].start_ms == 0 and cues[-1].end_ms == 12000
    assert sum(len(c.words) for c in cues) == 30


def test_layout_lines():
    assert layout_lines(["uma", "linha"], 42) == ("uma linha",)
    assert layout_lines(["a" * 30, "b" * 20, "c" * 5], 42) == ("a" * 30, "b" * 20 + " " + "c" * 5)
    assert layout_lines(["a" * 30, "b" * 30, "c" * 30], 42) is None
    assert layout_lines(["a" * 30, "b" * 20], 42, max_lines=1) is None


def test_empty_transcript_gives_empty_but_valid_documents():
    result = merge([], [])
    docs = {
        d.format: d.content for d in render_documents(result, list(OutputFormat), DocumentInfo())
    }
    assert docs[OutputFormat.SRT] == "" and list(srt.parse(docs[OutputFormat.SRT])) == []
    assert docs[OutputFormat.VTT].startswith("WEBVTT")
    assert list(webvtt.from_buffer(io.StringIO(docs[OutputFormat.VTT]))) == []
    assert docs[OutputFormat.TXT] == "" and docs[OutputFormat.RTTM] == ""
    assert json.loads(docs[OutputFormat.JSON])["segments"] == []


# ---- JSON, TXT, RTTM ------------------------------------------------------------------------


@pytest.fixture()
def dialogue() -> tuple[MergeResult, DocumentInfo]:
    decomposed = unicodedata.normalize("NFD", "Você já comeu pão de queijo? Não, só açaí.")
    words = tuple(W(i * 0.5, i * 0.5 + 0.4, w) for i, w in enumerate(decomposed.split()))
    turns = [T("spk_b", 0, 3.1), T("spk_a", 3.1, 5), T("spk_c", 6, 7)]
    result = merge([Segment(0, 0, 4.4, "", words)], turns)
    info = DocumentInfo(
        language="pt-BR",
        duration=8.0,
        recording_id="reunião de março.wav",
        trace_id="0af7651916cd43dd8448eb211c80319c",
        speaker_names={"SPEAKER_01": "Joana"},
    )
    return result, info


def test_json_document(dialogue):
    result, info = dialogue
    content = render_json(result, info)
    assert "açaí" in content and "\\u" not in content, "accents written literally"
    doc = json.loads(content)
    assert {
        "language",
        "duration",
        "speakers",
        "segments",
        "trace_id",
        "recording_id",
    } <= doc.keys()
    assert doc["language"] == "pt-BR" and doc["duration"] == 8.0
    assert doc["recording_id"] == "reunião de março.wav"
    assert doc["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert doc["speakers"] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_02"]
    assert doc["speaker_names"] == {"SPEAKER_01": "Joana"}
    assert [s["text"] for s in doc["segments"]] == ["Você já comeu pão de queijo?", "Não, só açaí."]
    seg = doc["segments"][1]
    assert set(seg) >= {"id", "start", "end", "speaker", "text", "words"}
    assert seg["id"] == 1 and seg["speaker"] == "SPEAKER_01"
    assert seg["words"][0] == {
        "start": 3.0,
        "end": 3.4,
        "word": "Não,",
        "probability": 0.9,
        "speaker": "SPEAKER_01",
    }
    assert doc["turns"][-1] == {"speaker": "SPEAKER_02", "start": 6.0, "end": 7.0}


def test_json_without_turns_has_null_speakers_and_transcript_duration():
    result = merge([sentence(0, "Só eu falo.")])
    doc = json.loads(render_json(result, DocumentInfo()))
    assert doc["speakers"] == [] and doc["duration"] == 1.2
    assert (
        doc["segments"][0]["speaker"] is None and doc["segments"][0]["words"][0]["speaker"] is None
    )


def test_txt_has_one_labelled_paragraph_per_turn(dialogue):
    result, info = dialogue
    assert render_txt(result.segments, info, OPTIONS) == (
        "SPEAKER_00: Você já comeu pão de queijo?\n\nJoana: Não, só açaí.\n"
    )
    same = merge(
        [sentence(0, "Um."), sentence(1, "Dois.", sid=1), sentence(2, "Três.", sid=2)],
        [T("a", 0, 0.9), T("b", 0.9, 2.2), T("b", 2.2, 3)],
    )
    assert render_txt(same.segments, DocumentInfo(), OPTIONS) == (
        "SPEAKER_00: Um.\n\nSPEAKER_01: Dois. Três.\n"
    )
    plain = merge([sentence(0, "Um."), sentence(1, "Dois.", sid=1), sentence(5, "Três.", sid=2)])
    assert render_txt(plain.segments, DocumentInfo(), OPTIONS) == "Um. Dois.\n\nTrês.\n"


def test_rttm_from_turns_loads_with_pyannote(dialogue, tmp_path):
    from pyannote.database.util import load_rttm

    result, info = dialogue
    content = render_rttm(result, info)
    assert content.splitlines() == [
        "SPEAKER reunião_de_março.wav 1 0.000 3.100 <NA> <NA> SPEAKER_00 <NA> <NA>",
        "SPEAKER reunião_de_março.wav 1 3.100 1.900 <NA> <NA> SPEAKER_01 <NA> <NA>",
        "SPEAKER reunião_de_março.wav 1 6.000 1.000 <NA> <NA> SPEAKER_02 <NA> <NA>",
    ]
    path = tmp_path / "out.rttm"
    path.write_text(content, encoding="utf-8")
    annotation = load_rttm(path)["reunião_de_março.wav"]
    assert sorted(annotation.labels()) == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_02"]
    assert annotation.get_timeline().duration() == pytest.approx(6.0)


def test_rttm_from_segment_speakers_when_no_turns():
    given = [
        Segment(0, 0, 1, "", (Word(0, 1, "Oi.", 0.9, "x"),)),
        Segment(1, 1, 2, "", (Word(1, 2, "Tudo?", 0.9, "x"),)),
        Segment(2, 2.5, 3, "", (Word(2.5, 3, "Sim.", 0.9, "y"),)),
    ]
    result = merge(given)
    assert result.speakers == ("SPEAKER_00", "SPEAKER_01")
    assert render_rttm(result, DocumentInfo()).splitlines() == [
        "SPEAKER recording 1 0.000 2.000 <NA> <NA> SPEAKER_00 <NA> <NA>",
        "SPEAKER recording 1 2.500 0.500 <NA> <NA> SPEAKER_01 <NA> <NA>",
    ]
    assert render_rttm(merge([sentence(0, "ninguém diarizou")]), DocumentInfo()) == ""


def test_every_format_is_nfc_utf8_and_keeps_accents(dialogue):
    result, info = dialogue
    docs = render_documents(
        result,
        [
            OutputFormat.RTTM,
            OutputFormat.SRT,
            OutputFormat.JSON,
            OutputFormat.SRT,
            OutputFormat.VTT,
            OutputFormat.TXT,
        ],
        info,
    )
    assert [d.format for d in docs] == [
        OutputFormat.RTTM,
        OutputFormat.SRT,
        OutputFormat.JSON,
        OutputFormat.VTT,
        OutputFormat.TXT,
    ], "once each, in order"
    assert [d.file_extension for d in docs] == ["rttm", "srt", "json", "vtt", "txt"]
    for doc in docs:
        assert unicodedata.is_normalized("NFC", doc.content)
        assert doc.content.encode("utf-8").decode("utf-8") == doc.content
        if doc.format is not OutputFormat.RTTM:
            assert "açaí" in doc.content and "Você" in doc.content, doc.format
    assert "reunião_de_março.wav" in docs[0].content
    check_srt(docs[1].content, result, info)
    check_vtt(docs[3].content, result, info)


# ---- cue balance ----------------------------------------------------------------------------


def test_no_trailing_one_word_cue_when_words_can_be_spread():
    text = (
        "A reunião de amanhã vai discutir a informação sobre a exceção que o coração da "
        "administração pediu ontem."
    )
    result = merge([sentence(0, text, step=0.3)])
    cues = build_cues(result.segments, OPTIONS)
    assert len(cues) == 2
    sizes = [len(" ".join(c.words)) for c in cues]
    assert abs(sizes[0] - sizes[1]) <= 12, sizes
    check_srt(render_srt(result.segments, DocumentInfo(), OPTIONS), result)


def test_cues_prefer_to_break_at_punctuation():
    text = (
        "Hoje nós vamos falar sobre economia, política e cultura brasileira com convidados "
        "especiais do programa."
    )
    result = merge([sentence(0, text, step=0.3)])
    cues = build_cues(result.segments, OPTIONS)
    assert cues[0].words[-1] == "economia,"
    check_vtt(render_vtt(result.segments, DocumentInfo(), OPTIONS), result)


def test_cues_prefer_to_break_at_a_pause():
    # Without the pause the balanced cut would be after "principal".
    first = "agora nós vamos começar a falar"
    words = [W(i * 0.3, i * 0.3 + 0.25, w) for i, w in enumerate(first.split())]
    t = words[-1].end + 0.8  # a pause (shorter than the 1 s that would split the segment)
    words += [
        W(t + i * 0.3, t + i * 0.3 + 0.25, w)
        for i, w in enumerate(
            "sobre o tema principal da nossa reunião extraordinária de hoje à tarde".split()
        )
    ]
    result = merge([Segment(0, 0, words[-1].end, "", tuple(words))])
    cues = build_cues(result.segments, OPTIONS)
    assert len(cues) == 2 and cues[0].words[-1] == "falar"


def test_a_sentence_that_fits_one_cue_is_never_split():
    result = merge([sentence(0, "Bom dia, tudo bem com você hoje?")])
    assert len(build_cues(result.segments, OPTIONS)) == 1
