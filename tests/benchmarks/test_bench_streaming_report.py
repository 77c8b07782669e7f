"""The streaming benchmark's WER summary: the issue's 3-point goal per profile, profiles paired."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_streaming.py"
sys.path.insert(0, str(BENCH.parent))

import bench_streaming as bench  # noqa: E402


def rows(finals: list[float], offline: list[float]) -> list[dict]:
    return [
        {"input": f"in{k}", "wer_finals_ref": f, "wer_offline_ref": o, "error": ""}
        for k, (f, o) in enumerate(zip(finals, offline))
    ]


def test_each_profile_s_gap_to_offline_and_the_pairing_of_profiles():
    offline = [0.10, 0.20, 0.30, 0.40]
    lines = bench.wer_gap_lines(
        {
            "balanced": rows([0.15, 0.22, 0.38, 0.41], offline),  # gaps 5, 2, 8, 1 points
            "accurate": rows([0.11, 0.21, 0.33, 0.45], offline),  # gaps 1, 1, 3, 5 points
        }
    )
    assert lines[0].startswith("  balanced finals vs the offline mesh: +4.0 points (95% bootstrap")
    assert lines[0].endswith("within 3 points on 2 of 4")
    assert lines[1].startswith("  accurate finals vs the offline mesh: +2.5 points")
    assert lines[1].endswith("within 3 points on 3 of 4")
    # accurate - balanced per input: -4, -1, -5, +4 points.
    assert lines[2].startswith("  accurate - balanced: -1.5 points (")
    assert lines[2].endswith("better on 3 of 4")


def test_failed_runs_and_inputs_without_reference_are_left_out():
    data = rows([0.5, 0.2], [0.1, 0.1])
    data[0]["error"] = "UNAVAILABLE"
    data.append({"input": "noref", "wer_finals_ref": None, "wer_offline_ref": None, "error": ""})
    lines = bench.wer_gap_lines({"balanced": data})
    assert lines == [
        "  balanced finals vs the offline mesh: +10.0 points (95% bootstrap over inputs "
        "+nan to +nan), within 3 points on 0 of 1"
    ]


def test_the_mean_s_interval_holds_the_mean_and_narrows_with_more_inputs():
    few = [0.0, 0.1, 0.2, 0.3]
    lo, hi = bench.mean_interval(few)
    assert lo < 0.15 < hi
    many_lo, many_hi = bench.mean_interval(few * 25)
    assert lo < many_lo < 0.15 < many_hi < hi


def test_closing_finals_that_waited_for_a_decode_and_those_at_the_stream_s_end():
    def final(eou, decoded, received, step_s=0.02):
        return {"eou": eou, "decoded": decoded, "received_at_step": received, "step_s": step_s}

    data = [
        {
            "duration_s": 10.0,
            "finals": [
                final(True, False, 4.0),  # from the speculative decode
                final(True, True, 7.0, 1.5),  # decoded after the endpoint
                final(False, True, 8.0, 0.4),  # an agreement commit: not a closing final
                final(True, True, 10.0, 2.5),  # decoded again at the stream's end
            ],
        },
        {"duration_s": 5.0, "finals": [final(True, False, 5.0)]},
    ]
    line = bench.closing_waits_line(data)
    assert line == (
        "closing finals that waited for a decode of their own: 2 of 4 "
        "(1 a stream's last phrase); that decode p50 2.00 s"
    )


RTTM = """SPEAKER conv 1 0.500 3.000 <NA> <NA> a <NA> <NA>
SPEAKER conv 1 3.800 2.000 <NA> <NA> b <NA> <NA>
SPEAKER conv 1 5.600 3.000 <NA> <NA> a <NA> <NA>
SPEAKER conv 1 6.000 0.500 <NA> <NA> b <NA> <NA>
SPEAKER conv 1 9.200 1.000 <NA> <NA> b <NA> <NA>
"""


def test_phrase_ends_are_turn_ends_followed_by_silence():
    # 3.5 (pause 0.3 before b), 5.8 is talked over by a's turn from 5.6, 6.5 lies inside a's
    # turn (a backchannel), 8.6 (pause 0.6), 10.2 the last (pause inf).
    ends = bench.phrase_ends(RTTM)
    assert [round(e, 3) for e, _ in ends] == [3.5, 8.6, 10.2]
    assert [round(p, 3) for _, p in ends[:2]] == [0.3, 0.6]
    assert ends[2][1] == float("inf")


def test_phrase_end_latency_is_the_first_final_reaching_the_end_whatever_closes_it():
    phrases = bench.phrase_ends(RTTM)
    # (end of the final's last word, arrival): the first phrase's words end at 3.3 (within
    # FINAL_REACH_S of 3.5) and arrive at 7.0: a profile that ran the first two turns into one
    # utterance; the second phrase's at 8.5 arrive at 9.9; nothing reaches the last one.
    finals = [(2.0, 4.0), (3.3, 7.0), (8.5, 9.9)]
    assert [round(x, 2) for x in bench.phrase_end_latencies(finals, phrases, 0.3)] == [3.5, 1.3]
    assert [round(x, 2) for x in bench.phrase_end_latencies(finals, phrases, 0.5)] == [1.3]
    # A final that stops short of a phrase end does not reach it: the next one counts.
    assert [
        round(x, 2) for x in bench.phrase_end_latencies([(3.0, 4.0), (8.5, 9.9)], phrases, 0.3)
    ] == [6.4, 1.3]
    lines = bench.phrase_lines("accurate ", [(finals, phrases)])
    assert lines[0].startswith(
        "  accurate phrase ends (reference turns, pause >= 0.3 s): p50 2.40 s"
    )
    assert lines[0].endswith("n=2")
    assert lines[1].endswith("n=1")


def test_simulated_variants_are_paired_with_the_first_of_their_own_profile():
    def sim(wers):
        return [
            {"input": f"in{k}", "wer_ref": w, "wer_offline_ref": 0.1} for k, w in enumerate(wers)
        ]

    lines = bench.variant_wer_lines(
        {
            "accurate": sim([0.2, 0.3, 0.4]),
            "accurate:endpoint_silence_s=0.3": sim([0.1, 0.3, 0.3]),  # -10, 0, -10 points
            "balanced": sim([0.3, 0.3, 0.3]),
            "balanced:endpoint_silence_s=0.3": sim([0.4, 0.4, 0.3]),  # +10, +10, 0 points
        }
    )
    assert lines[0].startswith("  accurate finals vs plain faster-whisper: +20.0 points")
    paired = [line for line in lines if " - " in line]
    assert paired[0].startswith("  accurate:endpoint_silence_s=0.3 - accurate: -6.7 points")
    assert paired[0].endswith("better on 2 of 3")
    assert paired[1].startswith("  balanced:endpoint_silence_s=0.3 - balanced: +6.7 points")
    assert paired[1].endswith("better on 0 of 3")
    assert len(paired) == 2  # never a variant of one profile against another profile


def test_a_phrase_without_a_final_shows_as_deletions_pooled_over_inputs():
    from support.metrics import error_counts

    reference = "o plano de saúde cobre a cirurgia. Você viu o jogo?"
    lost = error_counts([reference], ["você viu o jogo"])  # the first phrase got no final
    assert lost == {"substitutions": 0, "deletions": 7, "insertions": 0, "words": 11}
    misheard = error_counts([reference], ["o plano de saú cobre a cirurgia você viu o jogo ontem"])
    assert misheard == {"substitutions": 1, "deletions": 0, "insertions": 1, "words": 11}
    assert error_counts([""], ["ruído"])["words"] == 0  # no reference: not counted
    rows = [
        {"errors": lost, "errors_offline": misheard},
        {"errors": misheard, "errors_offline": misheard},
    ]
    (line,) = bench.error_lines("accurate ", rows, baseline="plain faster-whisper")
    assert line == (
        "  accurate finals' errors: substitutions 4.5%, deletions 31.8%, insertions 4.5% of 22 "
        "reference words (plain faster-whisper: substitutions 9.1%, deletions 0.0%, "
        "insertions 9.1%)"
    )
    assert bench.error_lines("", [{"input": "old run"}]) == []  # nothing counted: no line


def test_deletions_where_one_final_ends_and_the_next_begins_are_told_from_the_rest():
    from support.metrics import boundary_deletions

    reference = "Em dezembro o décimo terceiro cai na conta. O pronto-socorro está lotado."
    # "Em" lost before the first final, "o" between two finals, "na" inside one.
    finals = ["dezembro o décimo terceiro", "cai conta.", "pronto-socorro está lotado"]
    assert boundary_deletions(reference, finals) == ["em", "o"]
    assert boundary_deletions(reference, [" ".join(finals)]) == ["em"]  # one final: "o" inside
    assert len(boundary_deletions(reference, [])) == 13  # nothing final: every word
    assert boundary_deletions("", ["ruído"]) == []
    rows = [
        {"errors": {"substitutions": 0, "deletions": 3, "insertions": 0, "words": 13}},
        {"errors": {"substitutions": 1, "deletions": 2, "insertions": 0, "words": 10}},
    ]
    assert len(bench.error_lines("", rows)) == 1  # a mesh run: no final's own text, no line
    rows[0]["boundary_deleted_words"], rows[1]["boundary_deleted_words"] = ["em", "o"], ["o"]
    assert bench.error_lines("accurate ", rows)[1] == (
        "  accurate of the 5 deleted words, 3 where one final ends and the next begins "
        "(or before the first, after the last); commonest: o 2, em 1"
    )


def test_a_long_turn_no_final_covers_is_counted_and_short_or_covered_ones_are_not():
    rttm = (
        "SPEAKER c 1 0.500 2.000 <NA> <NA> a <NA> <NA>\n"  # 0.5-2.5
        "SPEAKER c 1 3.000 1.000 <NA> <NA> b <NA> <NA>\n"  # 3.0-4.0: too short to check
        "SPEAKER c 1 4.500 3.000 <NA> <NA> a <NA> <NA>\n"  # 4.5-7.5
        "SPEAKER c 1 8.000 2.000 <NA> <NA> b <NA> <NA>\n"  # 8.0-10.0
    )
    turns = bench.rttm_turns(rttm)
    assert turns == [(0.5, 2.5), (3.0, 4.0), (4.5, 7.5), (8.0, 10.0)]
    # The first turn fully covered, the third by 0.8 s of 3 (27%: lost), the last by 0.7 of 2.
    spans = [(0.4, 2.6), (6.7, 7.5), (9.3, 10.2)]
    assert bench.uncovered_turns(spans, turns) == (1, 3)
    assert bench.uncovered_turns([], turns) == (3, 3)
    (line,) = bench.uncovered_line("accurate ", [("in0", spans, turns), ("in1", [], turns[:1])])
    assert line == "  accurate turns of 1.5 s or more without a final: 2 of 4 (in0 1, in1 1)"
    assert bench.uncovered_line("", [("in0", spans, [])]) == []  # no RTTM: no line


def _report(tmp_path: Path, data: object) -> subprocess.CompletedProcess:
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(data), encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(BENCH), "--report", str(saved), "--png", str(tmp_path / "run.png")],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_report_prints_a_saved_mesh_run_again_and_refuses_what_is_not_a_run(tmp_path):
    row = {
        "input": "validate_00",
        "duration_s": 75.0,
        "error": "",
        "final_latency": [0.8, 1.2, 2.0],
        "eou_latency": [0.8, 1.2],
        "first_interim_latency": [2.5],
        "wer_finals_ref": 0.20,
        "wer_offline_ref": 0.15,
        "wer_finals_vs_offline": 0.10,
        "rtf": 0.5,
    }
    mesh = {
        "profiles": {
            "balanced": [row, dict(row, input="validate_01", wer_finals_ref=0.30)],
            "accurate": [
                dict(row, wer_finals_ref=0.16),
                dict(row, input="validate_01", wer_finals_ref=0.26),
            ],
        },
        "capacity": [{"sessions": 1, "p50": 1.2, "p95": 2.0, "errors": []}],
        "load_before": [0.5, 0.5, 0.5],
        "load_after": [1.0, 1.0, 1.0],
    }
    done = _report(tmp_path, mesh)
    assert done.returncode == 0, done.stderr
    assert "  accurate finals vs the offline mesh: +6.0 points" in done.stdout
    assert "accurate - balanced: -4.0 points" in done.stdout
    assert not (tmp_path / "run.png").exists()  # re-printing does not replace a run's plot
    for junk in ({"something": 1}, [1, 2]):
        refused = _report(tmp_path, junk)
        assert refused.returncode == 2
        assert "is not a --json file of this benchmark" in refused.stderr
        assert "Traceback" not in refused.stderr


def test_a_variant_names_a_profile_and_overrides_numbers_and_tuples_of_seconds():
    assert bench.parse_variant("accurate") == ("accurate", {})
    assert bench.parse_variant("balanced:context_s=4.0,beam_size=5") == (
        "balanced",
        {"context_s": 4.0, "beam_size": 5},
    )
    assert bench.parse_variant("accurate:rover_contexts_s=0/2/6/12") == (
        "accurate",
        {"rover_contexts_s": (0.0, 2.0, 6.0, 12.0)},
    )
    assert bench.parse_variant("accurate:rover_contexts_s=12/") == (
        "accurate",
        {"rover_contexts_s": (12.0,)},
    )
