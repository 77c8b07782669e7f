"""Word-level combination of transcripts (pure core, no model)."""

from __future__ import annotations

from asr_mesh.services.common.domain import Word, word_key
from asr_mesh.services.transcription.rover import RoverSettings, align, combine


def transcript(text: str, probabilities: list[float] | None = None, at: float = 0.0) -> list[Word]:
    words = text.split()
    probabilities = probabilities or [0.9] * len(words)
    return [
        Word(at + i * 0.5, at + i * 0.5 + 0.4, w, p)
        for i, (w, p) in enumerate(zip(words, probabilities, strict=True))
    ]


def texts(words: list[Word]) -> str:
    return " ".join(w.word for w in words)


def test_words_match_without_case_or_punctuation_but_with_accents() -> None:
    assert word_key("Socorro,") == word_key("socorro") == "socorro"
    assert word_key("está") != word_key("esta")


def test_alignment_puts_each_word_in_one_slot_and_marks_what_a_transcript_did_not_say() -> None:
    slots = align(
        [
            transcript("o pronto socorro está cheio"),
            transcript("o conto socorro está"),
            transcript("o pronto socorro está cheio hoje"),
        ]
    )
    said = [[w.word if w else None for w in slot] for slot in slots]
    assert said == [
        ["o", "o", "o"],
        ["pronto", "conto", "pronto"],
        ["socorro", "socorro", "socorro"],
        ["está", "está", "está"],
        ["cheio", None, "cheio"],
        [None, None, "hoje"],
    ]


def test_the_majority_wins_a_substitution_even_against_a_surer_word() -> None:
    heard = [
        transcript("o pronto socorro", [0.9, 0.5, 0.9]),
        transcript("o conto socorro", [0.9, 0.95, 0.9]),
        transcript("o pronto socorro", [0.9, 0.5, 0.9]),
    ]
    assert texts(combine(heard, RoverSettings(vote_weight=0.75))) == "o pronto socorro"
    # Confidence alone: the surer word.
    assert texts(combine(heard, RoverSettings(vote_weight=0.0))) == "o conto socorro"


def test_two_transcripts_keep_the_surer_word_of_each_slot() -> None:
    first = transcript("a consulta foi marcada para terça", [0.9, 0.4, 0.9, 0.9, 0.9, 0.9])
    second = transcript("a consulta foi mancada para terça", [0.9, 0.9, 0.9, 0.3, 0.9, 0.9])
    combined = combine([first, second], RoverSettings(vote_weight=0.0))
    assert texts(combined) == "a consulta foi marcada para terça"
    # Ties go to the first transcript.
    assert texts(combine([second, first], RoverSettings(vote_weight=1.0))) == texts(second)


def test_a_word_only_one_transcript_heard_stays_or_goes_with_the_no_word_confidence() -> None:
    heard = [transcript("bom dia"), transcript("bom dia gente", [0.9, 0.9, 0.6])]
    assert texts(combine(heard, RoverSettings(0.0, null_confidence=0.7))) == "bom dia"
    assert texts(combine(heard, RoverSettings(0.0, null_confidence=0.5))) == "bom dia gente"


def test_identical_transcripts_come_back_unchanged_and_times_never_go_back() -> None:
    same = transcript("um dois três quatro")
    assert combine([same, same, same], RoverSettings()) == same
    late = transcript("um dois três", [0.5, 0.5, 0.9], at=0.3)
    early = transcript("um dois três", [0.9, 0.9, 0.5])
    combined = combine([early, late], RoverSettings(vote_weight=0.0))
    assert texts(combined) == "um dois três"
    starts = [w.start for w in combined]
    assert starts == sorted(starts)
    assert all(a.end <= b.start for a, b in zip(combined, combined[1:], strict=False))
    assert all(w.end >= w.start for w in combined)


def test_nothing_to_combine_gives_nothing() -> None:
    assert combine([], RoverSettings()) == []
    assert combine([[], []], RoverSettings()) == []
    assert texts(combine([[], transcript("olá")], RoverSettings(0.0, 0.5))) == "olá"
