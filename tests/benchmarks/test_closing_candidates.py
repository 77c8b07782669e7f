"""The closing-candidates diagnostic's rules: which candidate each keeps, and the WER it builds."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import closing_candidates as cc  # noqa: E402


def test_the_surer_candidate_is_kept_the_first_on_ties_and_a_margin_favours_the_first():
    candidates = {
        "A": [("bom", 0.9), ("dia", 0.2)],  # mean log-probability -0.86
        "C": [("bom", 0.9), ("dia", 0.5)],  # -0.40
        "D": [],  # heard nothing: below any transcript
    }
    assert cc.pick(candidates, ["A", "C"], "logprob") == "C"
    assert cc.pick(candidates, ["A", "C"], "logprob", margin=0.5) == "A"
    assert cc.pick(candidates, ["A", "D"], "logprob") == "A"
    assert cc.pick(candidates, ["D", "A"], "prob") == "A"
    assert cc.pick({"A": candidates["A"], "B": candidates["A"]}, ["A", "B"], "logprob") == "A"


def test_a_rule_s_wer_is_built_from_the_candidates_it_keeps_per_utterance():
    data = {
        "items": [
            {
                "reference": "bom dia claro",
                "utterances": [
                    {
                        "candidates": {
                            "A": [("bom", 0.9), ("tia", 0.1)],
                            "C": [("bom", 0.9), ("dia", 0.8)],
                        }
                    },
                    {"candidates": {"A": [("claro", 0.9)], "C": [("caro", 0.3)]}},
                ],
            }
        ]
    }
    assert cc.wers(data, ["A", "C"]).tolist() == [0.0]  # C's first, A's second: all right
    assert round(float(cc.wers(data, ["A"])[0]), 3) == round(1 / 3, 3)  # "tia"
    assert round(float(cc.wers(data, ["C"])[0]), 3) == round(1 / 3, 3)  # "caro"
