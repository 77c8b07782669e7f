"""The doubt-then-beam policy table: which utterances are decoded twice and what it scores."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import doubt_rebeam as db  # noqa: E402


def way(words: str, logprob: float | None, looped: bool = False, cpu_s: float = 1.0) -> dict:
    return {"words": words.split(), "logprob": logprob, "looped": looped, "cpu_s": cpu_s}


def utterance(greedy: dict, beam: dict) -> dict:
    return {"greedy_prompt": greedy, "greedy": greedy, "beam5": beam}


DECODED = [
    {
        "input": "one",
        "reference": "bom dia tudo bem",
        "utterances": [
            utterance(way("bom dia", -0.1), way("bom dia", -0.1, cpu_s=2.0)),  # sure, right
            utterance(way("tudo vem", -0.6), way("tudo bem", -0.3, cpu_s=2.0)),  # unsure, wrong
        ],
    },
    {
        "input": "two",
        "reference": "claro",
        "utterances": [
            # a loop: its words were dropped when decoded
            utterance(way("", -0.1, looped=True), way("claro", -0.2, cpu_s=2.0))
        ],
    },
]


def test_only_doubtful_or_looping_greedy_transcripts_are_decoded_again():
    assert db.policy(DECODED[0]["utterances"][0], "greedy", -0.3) == (["bom", "dia"], False)
    assert db.policy(DECODED[0]["utterances"][1], "greedy", -0.3) == (["tudo", "bem"], True)
    assert db.policy(DECODED[1]["utterances"][0], "greedy", -0.3) == (["claro"], True)
    assert db.policy(DECODED[0]["utterances"][1], "greedy", None) == (["tudo", "vem"], False)
    no_words = utterance(way("", None), way("ok", -0.2))
    assert db.policy(no_words, "greedy", -0.9) == (["ok"], True)


def test_the_table_scores_each_threshold_and_counts_the_second_decodes():
    rows = {(r["first"], r["threshold"]): r for r in db.table(DECODED, [-0.3, -0.9])}
    never = rows[("greedy", None)]
    assert never["per_input"] == pytest.approx([0.25, 1.0])  # "vem"; loop dropped: all lost
    assert never["twice"] == 0 and never["cpu_s"] == pytest.approx(3.0)
    doubt = rows[("greedy", -0.3)]
    assert doubt["wer"] == 0.0 and doubt["twice"] == pytest.approx(2 / 3)
    assert doubt["cpu_s"] == pytest.approx(3.0 + 4.0)
    lenient = rows[("greedy", -0.9)]  # only the loop is decoded again
    assert lenient["per_input"] == pytest.approx([0.25, 0.0]) and lenient["twice"] == pytest.approx(
        1 / 3
    )
    beam = rows[("beam5", None)]
    assert beam["wer"] == 0.0 and beam["cpu_s"] == pytest.approx(6.0)
