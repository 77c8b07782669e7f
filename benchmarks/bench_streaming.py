"""Streaming recognition benchmark: latency, accuracy and capacity of StreamingTranscribe.

    python benchmarks/bench_streaming.py [--corpus DIR] [--split validate] [--long-seconds 120]
                                         [--profiles balanced] [--max-sessions 4] [--png FILE]

Starts the local mesh (separate processes, as `asr serve`), then for each conversation of the
corpus (those of `--split` when the manifest marks splits) and the first `--long-seconds` of
the long file: streams it through the gateway at real time (100 ms chunks) and records when
each event arrives. Reported per input and profile:

- final latency p50/p95: received_s - end of each final result (received_s counts from the
  first audio sent; audio is sent at real time, so this is how long after a word was spoken
  its final text arrived);
- phrase-end latency: from the end of each phrase of the reference (a turn of the RTTM that
  ends in a pause, `phrase_ends`) to the arrival of the first final reaching it. Unlike the
  EOU latency it is measured at the same phrase ends whatever the profile calls an utterance:
  a profile with a longer endpoint silence closes fewer utterances, and the finals of the
  phrases it runs together (turns 0.3-0.5 s apart) wait for a later endpoint;
- first-interim latency: from the start of an utterance (speech-begin offset) to the first
  interim text of it;
- WER of the finals against the reference text, and against the offline mesh (`Transcribe`,
  no diarization) on the same audio, and the offline mesh's own WER;
- the finals' errors by kind, pooled (substitutions, deletions, insertions per reference word),
  beside the offline transcript's: a phrase that never got a final shows as deletions; and
  the reference turns of 1.5 s or more that no final covers (`uncovered_turns`);
- RTF: decode time / audio time of the session.

Then capacity: N sessions of the first conversation at once (N = 1, 2, ...), final latency p95
of all of them; the machine holds N while p95 <= 3 s. A table is printed and a PNG drawn.
The load average of the machine is printed with the figures: on a shared machine it matters.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "gen"), str(REPO / "tests")]
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

from asr_mesh.client.sdk import GatewayClient, StreamOptions, TranscribeOptions  # noqa: E402
from support.metrics import boundary_deletions, error_counts, wer  # noqa: E402

CHUNK = 3200  # bytes: 100 ms of 16 kHz s16le
PHRASE_PAUSES_S = (0.3, 0.5)
"""Phrase ends are reported for reference turns followed by at least these pauses."""
FINAL_REACH_S = 0.4
"""A final reaches a phrase end when its last word ends at most this long before the turn's end
in the RTTM (Whisper's word ends fall a little before the synthesised turn's)."""


@dataclass
class Input:
    name: str
    pcm: bytes
    reference: str  # "" when the audio was cut and no reference fits
    path: Path  # a file holding exactly this audio (for the offline mesh)
    phrases: list[tuple[float, float]] = field(default_factory=list)
    """(end, pause after it) of each reference phrase (`phrase_ends`); empty without an RTTM."""
    turns: list[tuple[float, float]] = field(default_factory=list)
    """(start, end) of each reference turn (`rttm_turns`); empty without an RTTM."""

    @property
    def duration(self) -> float:
        return len(self.pcm) / 32000


@dataclass
class Run:
    finals: list[dict] = field(default_factory=list)
    interims: list[dict] = field(default_factory=list)
    speech: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    error: str = ""

    @property
    def text(self) -> str:
        return " ".join(f["text"] for f in self.finals)

    def final_latencies(self, eou_only: bool = False) -> list[float]:
        """received_s - end of each final (only those closing an utterance with `eou_only`)."""
        return [f["received_s"] - f["end"] for f in self.finals if f["eou"] or not eou_only]

    def first_interim_latencies(self) -> list[float]:
        out = []
        for begin in (s for s in self.speech if s["kind"] == "begin"):
            later = [i for i in self.interims if i["start"] >= begin["offset"] - 0.3 and i["text"]]
            if later:
                out.append(later[0]["received_s"] - begin["offset"])
        return out


def decode(path: Path, seconds: float | None = None) -> bytes:
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path)]
    if seconds:
        cmd += ["-t", str(seconds)]
    return subprocess.run(
        cmd + ["-f", "s16le", "-ac", "1", "-ar", "16000", "-"], check=True, capture_output=True
    ).stdout


def inputs(corpus: Path, split: str, long_seconds: float, tmp: Path) -> list[Input]:
    manifest = json.loads((corpus / "manifest.json").read_text(encoding="utf-8"))
    chosen = []
    for entry in manifest.get("dia", []):
        if "split" in entry and split and entry["split"] != split:
            continue
        path = corpus / entry["audio"]
        phrases = reference_phrases(corpus, entry)
        turns = reference_turns(corpus, entry)
        chosen.append(Input(path.stem, decode(path), entry.get("text", ""), path, phrases, turns))
    longs = [e for e in manifest.get("long", []) if not split or e.get("split", split) == split]
    for entry in longs[:1]:
        if long_seconds <= 0:
            break
        path = corpus / entry["audio"]
        pcm = decode(path, long_seconds)
        cut = tmp / f"{path.stem}_{int(long_seconds)}s.wav"
        subprocess.run(
            [
                "ffmpeg",
                "-nostdin",
                "-v",
                "error",
                "-y",
                "-f",
                "s16le",
                "-ar",
                "16000",
                "-ac",
                "1",
                "-i",
                "-",
                str(cut),
            ],
            input=pcm,
            check=True,
        )
        chosen.append(Input(f"{path.stem}[:{int(long_seconds)}s]", pcm, "", cut))
    return chosen


def reference_phrases(corpus: Path, entry: dict) -> list[tuple[float, float]]:
    """`phrase_ends` of a manifest entry's RTTM (none without one)."""
    rttm = entry.get("rttm")
    return phrase_ends((corpus / rttm).read_text(encoding="utf-8")) if rttm else []


def reference_turns(corpus: Path, entry: dict) -> list[tuple[float, float]]:
    """`rttm_turns` of a manifest entry's RTTM (none without one)."""
    rttm = entry.get("rttm")
    return rttm_turns((corpus / rttm).read_text(encoding="utf-8")) if rttm else []


def rttm_turns(rttm: str) -> list[tuple[float, float]]:
    """(start, end) of every turn of an RTTM text, in time order."""
    turns = []
    for line in rttm.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0] == "SPEAKER":
            start = float(fields[3])
            turns.append((start, start + float(fields[4])))
    return sorted(turns)


UNCOVERED_MIN_TURN_S = 1.5
"""Turns at least this long are checked for a final (shorter ones are often backchannels that
the other voice covers, and plain faster-whisper drops them too)."""
UNCOVERED_SHARE = 0.3
"""A turn is uncovered when the finals' time spans overlap less than this share of it."""


def uncovered_turns(
    spans: list[tuple[float, float]], turns: list[tuple[float, float]]
) -> tuple[int, int]:
    """(turns no final covers, turns checked): turns of `UNCOVERED_MIN_TURN_S` or more whose
    overlap with the finals' (start, end) `spans` is under `UNCOVERED_SHARE` of their length.
    A phrase the stream never gave a final for, whatever the WER does around it."""
    checked = [(a, b) for a, b in turns if b - a >= UNCOVERED_MIN_TURN_S]
    lost = 0
    for a, b in checked:
        covered = sum(max(0.0, min(b, end) - max(a, start)) for start, end in spans)
        lost += covered < UNCOVERED_SHARE * (b - a)
    return lost, len(checked)


def uncovered_line(label: str, inputs: list[tuple[str, list, list]]) -> list[str]:
    """The pooled `uncovered_turns` of `inputs`: (name, final spans, reference turns) of each,
    and the inputs the uncovered ones were in; nothing when no input has turns."""
    lost = checked = 0
    where = []
    for name, spans, turns in inputs:
        k, n = uncovered_turns([tuple(s) for s in spans], [tuple(x) for x in turns])
        lost, checked = lost + k, checked + n
        if k:
            where.append(f"{name} {k}")
    if not checked:
        return []
    return [
        f"  {label}turns of {UNCOVERED_MIN_TURN_S:g} s or more without a final: {lost} of "
        f"{checked}" + (f" ({', '.join(where)})" if where else "")
    ]


def phrase_ends(rttm: str) -> list[tuple[float, float]]:
    """(end, pause after it) of each reference turn (RTTM text) that ends in silence: no other
    turn runs across its end, and the pause lasts until the next turn starts (inf after the
    last). Turns that another speaker talks over, or that the next one starts on, are left out."""
    turns = rttm_turns(rttm)
    out = []
    for i, (_, end) in enumerate(turns):
        if any(a < end < b for j, (a, b) in enumerate(turns) if j != i):
            continue
        following = [a for a, _ in turns if a >= end]
        pause = round(min(following) - end, 3) if following else float("inf")  # RTTM: ms
        if pause > 0:
            out.append((end, pause))
    return out


def phrase_end_latencies(
    finals: list[tuple[float, float]], phrases: list[tuple[float, float]], min_pause: float
) -> list[float]:
    """For each phrase end followed by at least `min_pause` of silence, how long after it the
    first final reaching it (`FINAL_REACH_S`) arrived. `finals`: (end, arrival) pairs, both in
    seconds of audio since the stream began. A phrase no final reaches is left out."""
    out = []
    for end, pause in phrases:
        if pause < min_pause:
            continue
        arrivals = [at for reach, at in finals if reach >= end - FINAL_REACH_S]
        if arrivals:
            out.append(min(arrivals) - end)
    return out


def phrase_lines(label: str, inputs: list[tuple[list, list]]) -> list[str]:
    """One line per `PHRASE_PAUSES_S`: p50 (95% bootstrap) and p95 of the phrase-end latency,
    pooled over `inputs`: (finals as (end, arrival), phrases) of each."""
    lines = []
    for pause in PHRASE_PAUSES_S:
        lat = [
            x for finals, phrases in inputs for x in phrase_end_latencies(finals, phrases, pause)
        ]
        lo, hi = bootstrap(lat, 50)
        lines.append(
            f"  {label}phrase ends (reference turns, pause >= {pause:g} s): p50 "
            f"{pct(lat, 50):.2f} s (95% bootstrap {lo:.2f}-{hi:.2f}), p95 {pct(lat, 95):.2f} s, "
            f"n={len(lat)}"
        )
    return lines


def error_lines(label: str, rows: list[dict], baseline: str = "the offline mesh") -> list[str]:
    """The finals' errors by kind, pooled over the rows that counted them (`error_counts`), and
    the baseline's on the same inputs: a phrase that never got a final shows as deletions."""
    counted = [r for r in rows if r.get("errors", {}).get("words")]
    if not counted:
        return []

    def kinds(key: str) -> str:
        total = {k: sum(r[key][k] for r in counted) for k in counted[0][key]}
        n = total["words"]
        return ", ".join(
            f"{kind} {100 * total[kind] / n:.1f}%"
            for kind in ("substitutions", "deletions", "insertions")
        )

    words = sum(r["errors"]["words"] for r in counted)
    line = f"  {label}finals' errors: {kinds('errors')} of {words} reference words"
    if all(r.get("errors_offline", {}).get("words") for r in counted):
        line += f" ({baseline}: {kinds('errors_offline')})"
    lines = [line]
    if all("boundary_deleted_words" in r for r in counted):  # simulations: each final's text
        deleted = sum(r["errors"]["deletions"] for r in counted)
        at_edges = Counter(w for r in counted for w in r["boundary_deleted_words"])
        common = ", ".join(f"{w} {n}" for w, n in at_edges.most_common(8))
        lines.append(
            f"  {label}of the {deleted} deleted words, {at_edges.total()} where one final ends "
            "and the next begins (or before the first, after the last)"
            + (f"; commonest: {common}" if common else "")
        )
    return lines


def stream(client: GatewayClient, pcm: bytes, profile: str) -> Run:
    """Send `pcm` at real time; collect events with their arrival time."""
    run = Run()
    t0: list[float] = []

    def chunks():
        for k, offset in enumerate(range(0, len(pcm), CHUNK)):
            if not t0:
                t0.append(time.monotonic())
            wait = t0[0] + k * 0.1 - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            yield pcm[offset : offset + CHUNK]

    def secs(d) -> float:
        return d.ToTimedelta().total_seconds()

    try:
        for event in client.stream(chunks(), StreamOptions(profile=profile)):
            now = time.monotonic() - t0[0]
            kind = event.WhichOneof("event")
            if kind == "final":
                seg = event.final.segment
                run.finals.append(
                    {
                        "text": seg.text,
                        "start": secs(seg.start_offset),
                        "end": secs(seg.end_offset),
                        "eou": event.final.end_of_utterance,
                        "received_s": now,
                    }
                )
            elif kind == "interim":
                r = event.interim
                run.interims.append(
                    {
                        "text": r.text,
                        "start": secs(r.start_offset),
                        "end": secs(r.end_offset),
                        "received_s": now,
                    }
                )
            elif kind == "speech":
                run.speech.append(
                    {
                        "kind": "begin" if event.speech.kind == 1 else "end",
                        "offset": secs(event.speech.offset),
                        "received_s": now,
                    }
                )
            else:
                s = event.summary
                run.summary = {
                    "audio_s": secs(s.audio_duration),
                    "processing_s": secs(s.processing_duration),
                    "steps": s.decode_steps,
                    "finals": s.final_count,
                    "interims": s.interim_count,
                }
    except Exception as exc:  # reported in the table, the benchmark goes on
        run.error = f"{type(exc).__name__}: {exc}"
    return run


def default_beam_threads() -> int:
    """The transcription service's default `stream_beam_threads` (one place for it)."""
    from asr_mesh.services.transcription.server import TranscriptionSettings

    return TranscriptionSettings.model_fields["stream_beam_threads"].default


def parse_variant(text: str) -> tuple[str, dict]:
    """`NAME[:field=value,...]` → a profile name and overrides of its fields (for sweeps); a
    value with slashes is a tuple of seconds (`rover_contexts_s=0/2/6/12`)."""
    name, _, rest = text.partition(":")
    fields = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if "/" in value:  # a tuple field: rover_contexts_s=0/2/6/12
            fields[key.strip()] = tuple(float(v) for v in value.split("/") if v)
        else:
            fields[key.strip()] = float(value) if "." in value else int(value)
    return name.strip(), fields


def replay(
    session, samples: np.ndarray, chunk_s: float = 0.1, clock="cpu", decoded=None
) -> list[dict]:
    """Feed `samples` to `session` as `streaming.drive` does, in virtual real time.

    Chunk k arrives when its last sample has been spoken ((k+1) * chunk_s); a step blocks for as
    long as it really took (measured here), and audio that arrived meanwhile is taken at once
    afterwards, as in the service. Returns one record per final result: its end, when it was
    made (virtual wall time, from the first sample), the audio received when the step that made
    it started, that step's duration and whether it decoded.

    `clock`: how a step's duration is measured. A callable `clock(seconds_decoded)` gives a
    decode's duration from a cost model (deterministic: the same settings give the same
    timeline, so a sweep compares settings, not machine noise); VAD-only steps then cost 0.
    Otherwise: "wall": as it took here (inflated when other
    work shares the CPU). "cpu": the CPU seconds this process spent in it (all its threads),
    which other processes do not inflate; as a wall time it is pessimistic (it assumes the
    decoder's two threads gave no speed-up) and stands for an otherwise idle 2-core machine."""
    from asr_mesh.services.transcription import streaming as st

    n = int(chunk_s * 16000)
    chunks = [samples[k : k + n] for k in range(0, len(samples), n)]
    t, k, out = 0.0, 0, []

    def run(call) -> None:
        nonlocal t
        received, steps = session.received_s, session.counters.steps
        if callable(clock):
            decoded.clear()  # the decode wrapper logs the seconds it decodes
            events = call()
            took = sum(clock(x) for x in decoded)
        else:
            tick = time.process_time if clock == "cpu" else time.perf_counter
            started = tick()
            events = call()
            took = tick() - started
        t += took
        for e in events:
            if isinstance(e, st.Final):
                out.append(
                    {
                        "start": e.segment.start,
                        "end": e.segment.end,
                        "text": e.segment.text,
                        "eou": e.end_of_utterance,
                        "made_at": t,
                        "received_at_step": received,
                        "step_s": took,
                        "decoded": session.counters.steps > steps,
                    }
                )
            elif isinstance(e, st.Interim) and e.text:
                out.append({"interim": True, "start": e.start, "made_at": t})
            elif isinstance(e, st.SpeechEvent):
                out.append({"speech": e.kind, "offset": e.offset, "made_at": t})

    while k < len(chunks):
        t = max(t, (k + 1) * chunk_s)  # wait for at least one chunk
        while k < len(chunks) and (k + 1) * chunk_s <= t + 1e-9:
            session.push(chunks[k])
            k += 1
        if session.due():
            run(session.step)
    run(session.finish)
    return out


def simulate(
    items: list[Input],
    variants: list[str],
    models_dir: Path,
    out_json: Path | None,
    clock: str = "cpu",
    cost_model: str = "",
    rescue: bool = True,
    beam_threads: int = 0,
) -> dict:
    """Virtual real-time replay without the mesh: latency free of the network and of other
    sessions, each step as slow as it really is on this machine (as loaded as it is).

    Per final result: latency = when it was made - its end. End-of-utterance finals (closing an
    utterance at the endpoint silence: "after a phrase ends") are reported apart from all
    finals (agreement commits mid-utterance included), with where their latency goes: the
    audio that had arrived when the committing step began (endpoint silence + check grain +
    waiting for decodes already running) and that step's own time (a decode, unless the last
    decode had heard the whole phrase)."""
    from faster_whisper import WhisperModel

    from asr_mesh.services.transcription import streaming as st

    model = WhisperModel(
        str(models_dir / "whisper-base"),
        device="cpu",
        compute_type="int8",
        cpu_threads=2,
        local_files_only=True,
    )
    offline = offline_texts(model, items)
    models: dict = {}
    beam_models: dict[int, object] = {}
    results: dict = {"load_before": os.getloadavg(), "clock": clock, "variants": {}}
    print(f"step clock: {clock}; load average {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    print(
        f"\n{'variant':<28} {'input':<22} {'EOU p50':>7} {'EOU p95':>7} {'all p50':>7} "
        f"{'arrived':>7} {'step':>5} {'no-dec':>6} {'dec/s':>5} {'dec ms':>6} "
        f"{'WER fin':>7} {'WER off':>7} {'load':>4}"
    )
    for variant in variants:
        name, fields = parse_variant(variant)
        rows = []
        for item in items:
            options, prof = st.resolve_options(st.SessionOptions(profile=name), 3600)
            fields = dict(fields)
            threads = int(fields.pop("beam_threads", beam_threads))
            prof = replace(prof, **fields)
            if "endpoint_silence_s" in fields:
                options = replace(options, endpoint_silence_s=prof.endpoint_silence_s)
            decoder = st.grid_decoder(model, "pt", prof)
            timed: list[float] = []

            tick = time.process_time if clock == "cpu" else time.perf_counter
            cost = None
            if clock == "model":
                key = (prof.context_pad_s, prof.beam_size)
                if key not in models and cost_model:
                    models[key] = parse_cost_model(cost_model)
                if key not in models:
                    models[key] = decode_cost_model(decoder, items[0])
                cost = models[key]
            decoded: list[float] = []

            def timed_decoder(
                inner, charge_s=None, tick=tick, cost=cost, decoded=decoded, timed=timed
            ):
                """`inner`, its duration recorded in `timed`: measured by `tick`, or what the
                cost model says for the audio's length (`charge_s` instead when given)."""

                def decode(audio, prompt, prefix=""):
                    started = tick()
                    segments = inner(audio, prompt, prefix)
                    took = tick() - started
                    if cost is not None:
                        seconds = charge_s or audio.size / 16000
                        decoded.append(seconds)
                        took = cost(seconds)
                    timed.append(took)
                    return segments

                return decode

            # Beam-search decodes run on their own model instance, as in the service
            # (`stream_beam_threads`), when `beam_threads` (0 = the shared model) says so.
            beams = model
            if threads and prof.searches_beams:  # as the service: only such profiles load it
                if threads not in beam_models:
                    beam_models[threads] = WhisperModel(
                        str(models_dir / "whisper-base"),
                        device="cpu",
                        compute_type="int8",
                        cpu_threads=threads,
                        num_workers=2,  # a session's two closing decodes (second_context_s)
                        local_files_only=True,
                    )
                beams = beam_models[threads]
            # The cost model knows short-context greedy decodes only: a rescue (full 30 s
            # context, beam 5) is charged as the model's longest buffer (pessimistic).
            careful = timed_decoder(st.rescue_decoder(beams, "pt"), charge_s=25.0)
            # With a cost model, a closing (or doubt) decode of a wider beam is charged as
            # greedy (optimistic): compare beams on the "cpu" clock or through the mesh.
            closing = timed_decoder(st.closing_decoder(model, "pt", prof, beams))
            doubt = st.doubt_decoder(beams, "pt", prof)
            session = st.StreamingSession(
                timed_decoder(decoder),
                st.silero_vad(),
                options,
                prof,
                rescue=careful if rescue else None,
                closing=closing,
                doubt=timed_decoder(doubt) if doubt else None,
            )
            samples = np.frombuffer(item.pcm, dtype="<i2")
            records = replay(session, samples, clock=cost or clock, decoded=decoded)
            finals = [r for r in records if "eou" in r]
            text = " ".join(r["text"] for r in finals)
            row = {
                "input": item.name,
                "duration_s": item.duration,
                "phrases": [[end, min(pause, 1e9)] for end, pause in item.phrases],
                "turns": [list(x) for x in item.turns],
                "finals": finals,
                "first_interim": first_interims(records),
                "decodes": len(timed),
                "decode_s": timed,
                "wer_ref": wer([item.reference], [text]) if item.reference else None,
                "wer_offline_ref": wer([item.reference], [offline[item.name]])
                if item.reference
                else None,
                "errors": error_counts([item.reference], [text]),
                "errors_offline": error_counts([item.reference], [offline[item.name]]),
                "boundary_deleted_words": boundary_deletions(
                    item.reference, [f["text"] for f in finals]
                ),
                "processing_s": session.counters.processing_s,
                "rescues": session.counters.rescues,
                "redecodes": session.counters.redecodes,
                "load": os.getloadavg()[0],
            }
            rows.append(row)
            print_sim_row(variant, row)
            results["variants"][variant] = rows
            if out_json:  # after every input: a long run cut short keeps what it measured
                out_json.parent.mkdir(parents=True, exist_ok=True)
                out_json.write_text(json.dumps(results, indent=1, ensure_ascii=False))
        results["variants"][variant] = rows
        summarise(variant, rows)
    for line in variant_wer_lines(results["variants"]):
        print(line, flush=True)
    results["load_after"] = os.getloadavg()
    if out_json:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    return results


def summarise(variant: str, rows: list[dict]) -> None:
    """The pooled row and the intervals of a variant's inputs."""
    merged = merge_rows(rows)
    print_sim_row(variant, merged)
    for label, lat in (
        ("EOU finals", [f["made_at"] - f["end"] for f in merged["finals"] if f["eou"]]),
        ("all finals", [f["made_at"] - f["end"] for f in merged["finals"]]),
        ("first interim", merged["first_interim"]),
    ):
        lo, hi = bootstrap(lat, 50)
        print(
            f"  {label}: p50 {pct(lat, 50):.2f} s (95% bootstrap {lo:.2f}-{hi:.2f}), "
            f"p95 {pct(lat, 95):.2f} s, n={len(lat)}",
            flush=True,
        )
    print("  " + closing_waits_line(rows), flush=True)
    sim_inputs = [
        ([(f["end"], f["made_at"]) for f in r["finals"]], r.get("phrases", [])) for r in rows
    ]
    for line in phrase_lines("", sim_inputs):
        print(line, flush=True)
    for line in error_lines("", rows, baseline="plain faster-whisper"):
        print(line, flush=True)
    spans = [
        (r["input"], [(f["start"], f["end"]) for f in r["finals"]], r.get("turns", []))
        for r in rows
    ]
    for line in uncovered_line("", spans):
        print(line, flush=True)


def variant_wer_lines(variants: dict[str, list[dict]]) -> list[str]:
    """`wer_gap_lines` for simulated variants, each group of one profile apart (`accurate`,
    `accurate:endpoint_silence_s=0.3`, ...): every variant's finals against plain
    faster-whisper, and each later variant against the group's first, per input."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for variant, rows in variants.items():
        groups.setdefault(variant.split(":")[0], {})[variant] = [
            {
                "input": r["input"],
                "wer_finals_ref": r["wer_ref"],
                "wer_offline_ref": r["wer_offline_ref"],
                "error": "",
            }
            for r in rows
        ]
    plain = "plain faster-whisper"  # the simulation's stand-in for the offline mesh
    return [line for group in groups.values() for line in wer_gap_lines(group, baseline=plain)]


def closing_waits_line(rows: list[dict]) -> str:
    """How many closing finals waited for a decode of their own (run after the endpoint
    silence, or at the stream's end) rather than coming from a decode already run (the
    speculative one), how many of those were a stream's last phrase (made by a step that had
    the whole stream), and how long those decodes took (p50 of the step)."""
    closing = [(f, r["duration_s"]) for r in rows for f in r["finals"] if f["eou"]]
    waited = [(f, d) for f, d in closing if f["decoded"]]
    at_end = [f for f, d in waited if f["received_at_step"] >= d - 1e-6]
    took = pct([f["step_s"] for f, _ in waited], 50)
    return (
        f"closing finals that waited for a decode of their own: {len(waited)} of "
        f"{len(closing)} ({len(at_end)} a stream's last phrase); that decode p50 {took:.2f} s"
    )


def parse_cost_model(text: str):
    """A cost model from its printed form 'SECONDS:CPU_S,...' (as `decode_cost_model` prints)."""
    xs, ys = zip(*(map(float, kv.split(":")) for kv in text.split(",")))
    return lambda seconds: float(np.interp(seconds, xs, ys))


def decode_cost_model(decoder, item: Input, sizes=(1, 2, 3, 4, 6, 8, 10, 13, 16, 20, 25)):
    """CPU seconds of one decode as a function of the buffer's length, measured on speech of
    `item` (least of 3 runs per length: other work on the machine only adds), interpolated."""
    audio = np.frombuffer(item.pcm, dtype="<i2").astype(np.float32) / 32768.0
    xs, ys = [], []
    for size in sizes:
        clip = audio[: int(size * 16000)]
        if clip.size < size * 16000:
            break
        runs = []
        for _ in range(3):
            started = time.process_time()
            decoder(clip, "")
            runs.append(time.process_time() - started)
        xs.append(size)
        ys.append(min(runs))
    print(
        "decode cost model (CPU s by buffer s): "
        + ", ".join(f"{x:g}:{y:.2f}" for x, y in zip(xs, ys)),
        flush=True,
    )
    return lambda seconds: float(np.interp(seconds, xs, ys))


def first_interims(records: list[dict]) -> list[float]:
    """Per speech begin: wall time to the first non-empty interim of it - its offset."""
    out, begin = [], None
    for r in records:
        if r.get("speech") == "begin":
            begin = r["offset"]
        elif r.get("interim") and begin is not None and r["start"] >= begin - 0.3:
            out.append(r["made_at"] - begin)
            begin = None
    return out


def merge_rows(rows: list[dict]) -> dict:
    refs = [r for r in rows if r["wer_ref"] is not None]
    duration = sum(r["duration_s"] for r in rows)
    return {
        "input": "all",
        "duration_s": duration,
        "finals": [f for r in rows for f in r["finals"]],
        "first_interim": [x for r in rows for x in r["first_interim"]],
        "decodes": sum(r["decodes"] for r in rows),
        "decode_s": [x for r in rows for x in r["decode_s"]],
        # Word-weighted would need the counts; the mean over inputs is what the table shows.
        "wer_ref": float(np.mean([r["wer_ref"] for r in refs])) if refs else None,
        "wer_offline_ref": float(np.mean([r["wer_offline_ref"] for r in refs])) if refs else None,
        "processing_s": sum(r["processing_s"] for r in rows),
        "load": float(np.mean([r["load"] for r in rows])),
    }


def print_sim_row(variant: str, row: dict) -> None:
    finals = row["finals"]
    eou = [f for f in finals if f["eou"]]
    lat_eou = [f["made_at"] - f["end"] for f in eou]
    lat_all = [f["made_at"] - f["end"] for f in finals]
    arrived = [f["received_at_step"] - f["end"] for f in eou]
    step = [f["step_s"] for f in eou]
    nodec = np.mean([not f["decoded"] for f in eou]) if eou else float("nan")

    def w(v):
        return "      -" if v is None else f"{100 * v:6.1f}%"

    print(
        f"{variant[:28]:<28} {row['input'][:22]:<22} {pct(lat_eou, 50):7.2f} {pct(lat_eou, 95):7.2f} "
        f"{pct(lat_all, 50):7.2f} {pct(arrived, 50):7.2f} {pct(step, 50):5.2f} {nodec:6.0%} "
        f"{row['decodes'] / row['duration_s']:5.2f} {1000 * pct(row['decode_s'], 50):6.0f} "
        f"{w(row['wer_ref'])} {w(row['wer_offline_ref'])} {row['load']:4.1f}",
        flush=True,
    )


def offline_texts(model, items: list[Input]) -> dict[str, str]:
    """Plain faster-whisper on each whole input (beam 5, VAD), as a stand-in for the offline
    mesh when tuning without it; cached under out/ by input name."""
    cache = REPO / "out" / "bench_streaming_offline.json"
    known = json.loads(cache.read_text(encoding="utf-8")) if cache.exists() else {}
    for item in items:
        if item.name not in known:
            audio = np.frombuffer(item.pcm, dtype="<i2").astype(np.float32) / 32768.0
            segments, _ = model.transcribe(audio, language="pt", beam_size=5, vad_filter=True)
            known[item.name] = " ".join(s.text.strip() for s in segments)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(known, indent=1, ensure_ascii=False))
    return {item.name: known[item.name] for item in items}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def bootstrap(values: list[float], q: float, rounds: int = 2000) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the q-th percentile (finals resampled)."""
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(0)
    data = np.asarray(values)
    stats = np.percentile(rng.choice(data, size=(rounds, len(data))), q, axis=1)
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def mean_interval(values: list[float], rounds: int = 2000) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean (inputs resampled)."""
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(0)
    data = np.asarray(values)
    means = rng.choice(data, size=(rounds, len(data))).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def wer_gap_lines(
    profiles: dict[str, list[dict]], within: float = 0.03, baseline: str = "the offline mesh"
) -> list[str]:
    """The issue's WER goal per profile: finals' WER minus the offline mesh's, per input (the
    mean over inputs with its bootstrap interval, and on how many it is within `within`), then
    each later profile against the first on the same inputs."""
    lines = []
    per_profile: dict[str, dict[str, float]] = {}
    for profile, rows in profiles.items():
        scored = [r for r in rows if r.get("wer_finals_ref") is not None and not r.get("error")]
        if not scored:
            continue
        per_profile[profile] = {r["input"]: r["wer_finals_ref"] for r in scored}
        gaps = [r["wer_finals_ref"] - r["wer_offline_ref"] for r in scored]
        lo, hi = mean_interval(gaps)
        near = sum(g <= within + 1e-9 for g in gaps)
        lines.append(
            f"  {profile} finals vs {baseline}: {100 * np.mean(gaps):+.1f} points "
            f"(95% bootstrap over inputs {100 * lo:+.1f} to {100 * hi:+.1f}), within "
            f"{100 * within:g} points on {near} of {len(gaps)}"
        )
    names = list(per_profile)
    for other in names[1:]:
        first = per_profile[names[0]]
        shared = [k for k in first if k in per_profile[other]]
        diffs = [per_profile[other][k] - first[k] for k in shared]
        if len(diffs) < 2:
            continue
        lo, hi = mean_interval(diffs)
        lines.append(
            f"  {other} - {names[0]}: {100 * np.mean(diffs):+.1f} points "
            f"({100 * lo:+.1f} to {100 * hi:+.1f}), better on {sum(d < 0 for d in diffs)} of "
            f"{len(diffs)}"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--corpus",
        type=Path,
        default=Path(os.environ.get("ASR_CORPUS_DIR", REPO.parent / "shared" / "corpus-dev")),
    )
    parser.add_argument(
        "--split", default="validate", help="manifest split to use when entries carry one"
    )
    parser.add_argument(
        "--long-seconds", type=float, default=120.0, help="seconds of the long file (0 = skip)"
    )
    parser.add_argument("--profiles", default="balanced", help="comma list of latency profiles")
    parser.add_argument(
        "--max-sessions", type=int, default=4, help="most concurrent sessions tried"
    )
    parser.add_argument("--png", type=Path, default=Path("out/bench_streaming.png"))
    parser.add_argument("--json", type=Path, default=Path("out/bench_streaming.json"))
    parser.add_argument(
        "--simulate",
        action="store_true",
        help="audio-time replay without the mesh (the session's own latency, free of load)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        help="(simulate) PROFILE[:field=value,...]: a profile with some fields changed, for "
        "sweeps on the tune split; repeat for several",
    )
    parser.add_argument(
        "--clock",
        choices=["model", "cpu", "wall"],
        default="model",
        help="(simulate) a decode lasts what a cost model measured at the start says for its "
        "length (default: deterministic, unaffected by other work), its CPU seconds, or its "
        "wall seconds here; CPU seconds stand for one idle core per session (pessimistic for "
        "one session on 2 cores, what 2 sessions get)",
    )
    parser.add_argument(
        "--cost-model",
        default="",
        help="(simulate, --clock model) 'SECONDS:CPU_S,...' as printed by an earlier run, "
        "instead of measuring one (runs in parallel then share one clock)",
    )
    parser.add_argument("--only", default="", help="comma list: inputs whose name contains one")
    parser.add_argument(
        "--no-rescue",
        action="store_true",
        help="(simulate) without the careful re-decode of a looping closing decode",
    )
    parser.add_argument(
        "--beam-threads",
        type=int,
        default=None,
        help="(simulate) CPU threads of the model instance that runs beam-search decodes "
        "(0 = the shared 2-thread model); default: the service's `stream_beam_threads`; "
        "a variant's `beam_threads=N` overrides it",
    )
    parser.add_argument(
        "--report",
        nargs="+",
        type=Path,
        help="print the tables again from these --json files: simulations' inputs pooled by "
        "variant, each mesh run on its own",
    )
    args = parser.parse_args()
    if args.report:
        pooled: dict[str, list[dict]] = {}
        meshes: list[dict] = []
        for path in args.report:
            if not path.is_file():
                parser.error(f"--report: no such file {path}")
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                parser.error(f"--report: {path} is not a saved run ({exc})")
            if isinstance(data, dict) and "variants" in data:  # --simulate
                for variant, rows in data["variants"].items():
                    pooled.setdefault(variant, []).extend(rows)
            elif isinstance(data, dict) and "profiles" in data:  # through the mesh
                meshes.append(data)
            else:
                parser.error(f"--report: {path} is not a --json file of this benchmark")
        for data in meshes:
            # Printed as the run printed them (a mesh run's profiles are paired within it); no
            # plot, so the last run's out/bench_streaming.png is not overwritten.
            report(data, None)
        if not pooled:
            return 0
        # Runs saved before the phrase ends and error counts were recorded: from --corpus (and
        # the cached plain faster-whisper transcripts).
        manifest = args.corpus / "manifest.json"
        entries = (
            json.loads(manifest.read_text("utf-8")).get("dia", []) if manifest.is_file() else []
        )
        known = {Path(e["audio"]).stem: e for e in entries}
        cache = REPO / "out" / "bench_streaming_offline.json"
        plain = json.loads(cache.read_text(encoding="utf-8")) if cache.is_file() else {}
        for rows in pooled.values():
            for row in rows:
                entry = known.get(row["input"])
                if entry is None:
                    continue
                if "phrases" not in row:
                    row["phrases"] = reference_phrases(args.corpus, entry)
                if "turns" not in row:
                    row["turns"] = reference_turns(args.corpus, entry)
                if "errors" not in row and entry.get("text"):
                    said = " ".join(f["text"] for f in row["finals"])
                    row["errors"] = error_counts([entry["text"]], [said])
                    if row["input"] in plain:
                        row["errors_offline"] = error_counts([entry["text"]], [plain[row["input"]]])
                if "boundary_deleted_words" not in row and entry.get("text"):
                    row["boundary_deleted_words"] = boundary_deletions(
                        entry["text"], [f["text"] for f in row["finals"]]
                    )
        for variant, rows in pooled.items():
            for row in rows:
                print_sim_row(variant, row)
            summarise(variant, rows)
        for line in variant_wer_lines(pooled):
            print(line)
        return 0
    if args.simulate:
        with tempfile.TemporaryDirectory() as tmp:
            items = inputs(args.corpus, args.split, args.long_seconds, Path(tmp))
            if args.only:
                items = [i for i in items if any(o in i.name for o in args.only.split(","))]
            simulate(
                items,
                args.variant or [p.strip() for p in args.profiles.split(",") if p.strip()],
                REPO / "models",
                args.json,
                args.clock,
                args.cost_model,
                rescue=not args.no_rescue,
                beam_threads=default_beam_threads()
                if args.beam_threads is None
                else args.beam_threads,
            )
        return 0

    from asr_mesh.services.supervisor import LocalMesh

    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    load_before = os.getloadavg()
    results: dict = {"profiles": {}, "capacity": [], "load_before": load_before}
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalMesh(
            state_dir=Path(tmp) / "state",
            env={
                "ASR_TRANSCRIPTION_MAX_STREAMS": str(max(args.max_sessions, 2)),
                "ASR_TRANSCRIPTION_MAX_WORKERS": str(max(args.max_sessions, 2) + 8),
            },
        ) as mesh,
        GatewayClient(mesh.gateway_address) as client,
    ):
        items = inputs(args.corpus, args.split, args.long_seconds, Path(tmp))
        if args.only:
            items = [i for i in items if any(o in i.name for o in args.only.split(","))]
        print(
            f"inputs: {', '.join(f'{i.name} ({i.duration:.0f} s)' for i in items)}", file=sys.stderr
        )
        offline = {}
        for item in items:
            result = client.transcribe(item.path, TranscribeOptions())
            offline[item.name] = " ".join(s.text for s in result.segments)
        for profile in profiles:
            rows = []
            for item in items:
                run = stream(client, item.pcm, profile)
                rows.append((item, run))
                print(
                    f"{profile} {item.name}: {len(run.finals)} finals {run.error}", file=sys.stderr
                )
            results["profiles"][profile] = [
                {
                    "input": item.name,
                    "duration_s": item.duration,
                    "error": run.error,
                    "final_latency": run.final_latencies(),
                    "eou_latency": run.final_latencies(eou_only=True),
                    "phrases": [[end, min(pause, 1e9)] for end, pause in item.phrases],
                    "final_reach": [[f["end"], f["received_s"]] for f in run.finals],
                    "final_spans": [[f["start"], f["end"]] for f in run.finals],
                    "turns": [list(x) for x in item.turns],
                    "first_interim_latency": run.first_interim_latencies(),
                    "wer_finals_ref": wer([item.reference], [run.text]) if item.reference else None,
                    "wer_offline_ref": wer([item.reference], [offline[item.name]])
                    if item.reference
                    else None,
                    "wer_finals_vs_offline": wer([offline[item.name]], [run.text]),
                    "errors": error_counts([item.reference], [run.text]),
                    "errors_offline": error_counts([item.reference], [offline[item.name]]),
                    "rtf": run.summary.get("processing_s", 0)
                    / max(run.summary.get("audio_s", 0), 1e-6),
                    "summary": run.summary,
                    "finals_text": run.text,
                    "offline_text": offline[item.name],
                }
                for item, run in rows
            ]
        # Capacity: N sessions of the first input at once.
        first = items[0]
        for n in range(1, args.max_sessions + 1):
            runs: list[Run] = [Run() for _ in range(n)]

            def one(k: int, runs: list[Run] = runs) -> None:
                runs[k] = stream(client, first.pcm, profiles[0])

            threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            lat = [x for r in runs for x in r.final_latencies()]
            eou = [x for r in runs for x in r.final_latencies(eou_only=True)]
            errors = [r.error for r in runs if r.error]
            results["capacity"].append(
                {
                    "sessions": n,
                    "p50": pct(lat, 50),
                    "p95": pct(lat, 95),
                    "eou_p50": pct(eou, 50),
                    "eou_p95": pct(eou, 95),
                    "errors": errors,
                    "load": os.getloadavg()[0],
                }
            )
            print(f"{n} sessions: p95 {pct(lat, 95):.2f} s {errors}", file=sys.stderr)
            if errors or pct(lat, 95) > 3.0:
                break
    results["load_after"] = os.getloadavg()
    report(results, args.png)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    return 0


def report(results: dict, png: Path | None) -> None:
    print(
        f"\nload average before {results['load_before'][0]:.1f}, after {results['load_after'][0]:.1f} "
        f"({os.cpu_count()} CPUs)"
    )
    print(
        "final latency = received_s - end: EOU = finals closing an utterance (after a phrase "
        "ends), all = every final (agreement commits mid-utterance too)"
    )
    header = (
        f"{'profile':<12} {'input':<22} {'audio s':>7} {'finals':>6} {'EOU p50':>7} {'EOU p95':>7} "
        f"{'all p50':>7} {'all p95':>7} {'1st int':>7} {'WER fin':>7} {'WER off':>7} "
        f"{'fin/off':>7} {'RTF':>5}"
    )
    print(header)
    print("-" * len(header))
    for profile, rows in results["profiles"].items():
        all_lat, eou_lat, first = [], [], []
        for r in rows:
            all_lat += r["final_latency"]
            eou_lat += r.get("eou_latency", [])
            first += r["first_interim_latency"]

            def f(v):
                return "    -" if v is None else f"{100 * v:6.1f}%"

            print(
                f"{profile:<12} {r['input'][:22]:<22} {r['duration_s']:7.1f} {len(r['final_latency']):6d} "
                f"{pct(r.get('eou_latency', []), 50):7.2f} {pct(r.get('eou_latency', []), 95):7.2f} "
                f"{pct(r['final_latency'], 50):7.2f} {pct(r['final_latency'], 95):7.2f} "
                f"{pct(r['first_interim_latency'], 50):7.2f} {f(r['wer_finals_ref']):>7} "
                f"{f(r['wer_offline_ref']):>7} {f(r['wer_finals_vs_offline']):>7} {r['rtf']:5.2f}"
                + (f"  ERROR {r['error']}" if r["error"] else "")
            )
        refs = [r for r in rows if r["wer_finals_ref"] is not None]
        print(
            f"{profile:<12} {'all inputs':<22} {'':7} {len(all_lat):6d} {pct(eou_lat, 50):7.2f} "
            f"{pct(eou_lat, 95):7.2f} {pct(all_lat, 50):7.2f} {pct(all_lat, 95):7.2f} "
            f"{pct(first, 50):7.2f}"
            + (
                f" {100 * np.mean([r['wer_finals_ref'] for r in refs]):6.1f}% "
                f"{100 * np.mean([r['wer_offline_ref'] for r in refs]):6.1f}%  (mean of inputs)"
                if refs
                else ""
            )
        )
        for label, lat in (("EOU finals", eou_lat), ("all finals", all_lat)):
            for q in (50, 95):
                lo, hi = bootstrap(lat, q)
                print(
                    f"  {profile} {label} p{q}: {pct(lat, q):.2f} s "
                    f"(95% bootstrap interval {lo:.2f}-{hi:.2f}, n={len(lat)})"
                )
        mesh_inputs = [
            ([tuple(x) for x in r.get("final_reach", [])], r.get("phrases", [])) for r in rows
        ]
        for line in phrase_lines(f"{profile} ", mesh_inputs):
            print(line)
        for line in error_lines(f"{profile} ", rows):
            print(line)
        spans = [(r["input"], r.get("final_spans", []), r.get("turns", [])) for r in rows]
        for line in uncovered_line(f"{profile} ", spans):
            print(line)
    for line in wer_gap_lines(results["profiles"]):
        print(line)
    print("\nconcurrent sessions (first input, real time): final latency")
    for c in results["capacity"]:
        print(
            f"  {c['sessions']} sessions: all finals p50 {c['p50']:.2f} s, p95 {c['p95']:.2f} s; "
            f"EOU p50 {c.get('eou_p50', float('nan')):.2f} s, p95 {c.get('eou_p95', float('nan')):.2f} s; "
            f"load {c.get('load', float('nan')):.1f} {c['errors'] or ''}"
        )
    held = [c["sessions"] for c in results["capacity"] if c["p95"] <= 3.0 and not c["errors"]]
    print(f"  sessions held at p95 <= 3 s: {max(held) if held else 0}")
    if png is None:
        return

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for profile, rows in results["profiles"].items():
        for r in rows:
            lat = sorted(r["final_latency"])
            if lat:
                ax1.plot(
                    lat, np.arange(1, len(lat) + 1) / len(lat), label=f"{profile} {r['input']}"
                )
    ax1.axvline(1.5, color="grey", ls="--", lw=1)
    ax1.set_xlabel("final-result latency: received_s - end (s)")
    ax1.set_ylabel("share of final results")
    ax1.set_title("Final latency at real-time pace (CDF)")
    ax1.legend(fontsize=8)
    caps = results["capacity"]
    ax2.plot([c["sessions"] for c in caps], [c["p95"] for c in caps], "o-", label="p95")
    ax2.plot([c["sessions"] for c in caps], [c["p50"] for c in caps], "s--", label="p50")
    ax2.axhline(3.0, color="grey", ls="--", lw=1)
    ax2.set_xlabel("concurrent sessions")
    ax2.set_ylabel("final latency (s)")
    ax2.set_title(f"Capacity ({os.cpu_count()} CPUs, load {results['load_before'][0]:.1f})")
    ax2.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    print(f"plot: {png}")


if __name__ == "__main__":
    sys.exit(main())
