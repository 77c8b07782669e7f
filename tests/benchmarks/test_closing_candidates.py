"""The closing-candidates diagnostic's rules: which candidate each keeps, and the WER it builds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def _three_candidates_of_two_utterances() -> dict:
    return {
        "items": [
            {
                "reference": "bom dia claro que sim",
                "utterances": [
                    {
                        "candidates": {
                            "A": [("bom", 0.9), ("tia", 0.9)],
                            "C": [("bom", 0.9), ("dia", 0.6)],
                            "E": [("com", 0.9), ("dia", 0.6)],
                        }
                    },
                    {
                        "candidates": {
                            "A": [("claro", 0.9), ("que", 0.8), ("sim", 0.9)],
                            "C": [("caro", 0.9), ("que", 0.8), ("sim", 0.9)],
                            "E": [("claro", 0.5), ("sim", 0.9)],
                        }
                    },
                ],
            }
        ]
    }


def test_rover_builds_each_utterance_from_the_words_most_candidates_heard():
    data = _three_candidates_of_two_utterances()
    settings = cc.rover.RoverSettings(vote_weight=0.5, null_confidence=0.5)
    assert cc.rover_wers(data, ["A", "C", "E"], settings).tolist() == [0.0]
    # Kept whole, no one candidate is right: the surer (A) mishears "dia".
    assert cc.wers(data, ["A", "C", "E"]).tolist() == [0.2]


def test_the_rover_report_ranks_combinations_with_their_time_against_the_first_alone(capsys):
    data = _three_candidates_of_two_utterances()
    data["cpu_s"] = {"A": 10.0, "C": 8.0, "E": 4.0}
    cc.rover_report(data, cc.wers(data, ["A"]), top=1)
    best = capsys.readouterr().out.strip().splitlines()[-1].split()
    # Only all three together get every word; A alone missed 1 of 5 words (20%).
    assert best[0] == "A+C+E" and best[4] == "0.0%" and best[5] == "-20.0"
    assert best[3] == "1.20x"  # A beside C and E (12): 1.2 times A


def test_two_collects_of_a_split_merge_into_one_file_of_all_candidates(tmp_path):
    def collected(names, cpu):
        return {
            "split": "tune",
            "cpu_s": dict.fromkeys(names, cpu),
            "items": [
                {
                    "input": "x",
                    "utterances": [
                        {"start": 0.0, "end": 1.0, "candidates": {n: [(n, 0.5)] for n in names}}
                    ],
                }
            ],
        }

    first, second, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    first.write_text(json.dumps(collected(["A", "C"], 1.0)))
    second.write_text(json.dumps(collected(["A", "G"], 2.0)))
    cc.merge(first, second, out)
    merged = json.loads(out.read_text())
    assert merged["cpu_s"] == {"A": 1.0, "C": 1.0, "G": 2.0}  # the first file's A stays
    assert list(merged["items"][0]["utterances"][0]["candidates"]) == ["A", "C", "G"]
    other = collected(["G"], 2.0)
    other["items"][0]["utterances"][0]["end"] = 2.0
    second.write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="different utterances"):
        cc.merge(first, second, out)


def test_two_workers_share_decodes_as_evenly_as_they_can():
    cpu = {"A": 118.0, "C": 95.0, "E": 71.0, "I": 78.0}
    assert cc.two_worker_makespan(cpu, ["A"]) == 118.0
    assert cc.two_worker_makespan(cpu, ["A", "C"]) == 118.0  # one each
    assert cc.two_worker_makespan(cpu, ["A", "E", "I"]) == 149.0  # A alone, E and I together
    assert cc.two_worker_makespan(cpu, ["A", "C", "E", "I"]) == 189.0  # A+E against C+I (173)


def test_a_combination_is_named_by_its_candidates_and_optional_vote_settings():
    names, settings = cc.parse_combination("ACDEGJ")
    assert names == list("ACDEGJ") and settings == cc.st.ROVER_SETTINGS
    names, settings = cc.parse_combination("ADEGJ:0.5/0.7")
    assert names == list("ADEGJ")
    assert (settings.vote_weight, settings.null_confidence) == (0.5, 0.7)


def _report(collected: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """`closing_candidates.py report` run as a user runs it."""
    command = [sys.executable, cc.__file__, "report", str(collected), *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_a_misspelt_combination_or_a_file_without_a_and_c_is_one_readable_line(tmp_path):
    collected = tmp_path / "g.json"
    data = _three_candidates_of_two_utterances() | {"split": "tune", "cpu_s": {}}
    data["items"][0]["offline"] = "bom dia claro que sim"  # plain faster-whisper's transcript
    collected.write_text(json.dumps(data))
    bad = _report(collected, "--combine", "ADE:0.5")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "the vote settings are VOTE/NULL" in bad.stderr
    for utterance in data["items"][0]["utterances"]:
        del utterance["candidates"]["C"]
    collected.write_text(json.dumps(data))
    without_c = _report(collected, "--combine", "AE")
    assert without_c.returncode == 1 and "Traceback" not in without_c.stderr
    assert "measures against A+C, and it lacks ['C']" in without_c.stderr


def test_a_budget_keeps_only_sets_two_workers_finish_within_it():
    data = {
        "cpu_s": {"A": 100.0, "C": 90.0, "E": 40.0, "K": 50.0},
        "items": [{"utterances": [{"candidates": dict.fromkeys("ACEK", [])}]}],
    }
    sets = {"".join(names) for names, _ in cc.budget_combinations(data, 1.0)}
    assert sets == {"AEK", "CEK"}  # E and K together (90) beside A (100) or C (90)
    assert len(cc.budget_combinations(data, 1.0)) == 2 * len(cc.BUDGET_SETTINGS)
    wider = {"".join(names) for names, _ in cc.budget_combinations(data, 1.4)}
    assert wider == {"AEK", "ACE", "ACK", "CEK", "ACEK"}
