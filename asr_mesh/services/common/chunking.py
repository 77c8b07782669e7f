"""Where to cut long audio into chunks that are decoded independently. Pure: no numpy, no gRPC.

One cut rule serves two drivers:

- `plan_chunks(speech, streams)`: the whole file's speech known, cut into at most `streams`
  chunks of about equal speech (the lockstep strategy inside one transcription replica).
- `ChunkPlanner`: speech ranges arrive as audio is decoded (the gateway's fan-out across
  replicas); a chunk is released as soon as its end is decided, so the first chunk can be
  transcribed while the rest of the file is still being decoded. Every cut depends only on the
  speech before it, so the plan (and therefore the transcript) is the same however the audio
  arrives and however many replicas decode it.

The rule: the cut for a chunk of `share` seconds of speech goes in a pause whose position keeps
the chunk's speech within an eighth of `share` (the longest such pause, any pause of
`CLEAR_PAUSE_S` or more counting as long, ties to the nearest), so no cut falls inside speech
when a pause exists there; cuts are placed in the middle of the pause.
"""

from __future__ import annotations

from collections.abc import Sequence

CLEAR_PAUSE_S = 1.5
"""A pause this long ends a sentence for sure: longer ones make no better cut."""
TOLERANCE = 0.125
"""A cut may move the chunk's speech this fraction of its share away from the share."""
MIN_CHUNK_SPEECH_S = 60.0
"""`plan_chunks` gives a chunk at least this much speech: below it a context restart costs more
than the batch gains (a chunk is about two Whisper windows)."""

Range = tuple[float, float]


def _choose_cut(
    speech: Sequence[Range], cumulative: Sequence[float], last: int, goal: float, share: float
) -> int:
    """Index i (last < i < len - 1) of the speech range after which to cut, for `goal` seconds
    of speech before the cut; the pause after range i is the cut."""
    indices = range(last + 1, len(speech) - 1)
    candidates = [i for i in indices if abs(cumulative[i] - goal) <= TOLERANCE * share]
    if not candidates:
        candidates = [min(indices, key=lambda i: abs(cumulative[i] - goal))]
    return max(
        candidates,
        key=lambda i: (
            min(speech[i + 1][0] - speech[i][1], CLEAR_PAUSE_S),
            -abs(cumulative[i] - goal),
        ),
    )


def _cumulative(speech: Sequence[Range]) -> list[float]:
    out, done = [], 0.0
    for a, b in speech:
        done += b - a
        out.append(done)  # speech up to the end of range i
    return out


def plan_chunks(
    speech: list[Range], streams: int, min_speech_s: float = MIN_CHUNK_SPEECH_S
) -> list[Range]:
    """Cut the timeline into at most `streams` chunks of about equal speech, at pauses.

    `speech` are VAD ranges (seconds, sorted). Returns (start, end) ranges that cover the whole
    span of `speech`; one range when the audio is too short to split.
    """
    if not speech:
        return []
    total = sum(b - a for a, b in speech)
    count = max(1, min(streams, int(total / min_speech_s + 1e-6)))
    if count == 1:
        return [(0.0, speech[-1][1])]
    cumulative = _cumulative(speech)
    cuts: list[float] = []
    before, last = 0.0, -1  # speech before the last cut; index of the range before it
    for k in range(1, count):
        share = (total - before) / (count - k + 1)
        best = _choose_cut(speech, cumulative, last, before + share, share)
        cuts.append((speech[best][1] + speech[best + 1][0]) / 2)
        before, last = cumulative[best], best
        if last >= len(speech) - 2:
            break
    bounds = [0.0, *cuts, speech[-1][1]]
    return list(zip(bounds[:-1], bounds[1:]))


class ChunkPlanner:
    """Cuts a stream of speech ranges into chunks of about `share` seconds of speech.

    `feed` takes the ranges VAD found in the audio decoded so far (sorted, each after the
    previous) and returns the chunks whose end is now decided; `finish(duration)` returns the
    last one, which ends at the end of the audio. Chunks cover the timeline without gaps,
    starting at 0. A cut is decided once the speech seen passes its goal by the tolerance and
    one more range has started (so the pause after every candidate is known): the same cuts come
    out whether the ranges arrive one by one or all at once.
    """

    def __init__(self, share: float):
        if share <= 0:
            raise ValueError("share must be positive")
        self.share = share
        self._speech: list[Range] = []
        self._cumulative: list[float] = []
        self._last = -1  # index of the speech range before the last cut
        self._start = 0.0  # where the next chunk starts
        self._before = 0.0  # speech before the last cut

    def feed(self, ranges: Sequence[Range]) -> list[Range]:
        for a, b in ranges:
            if self._speech and a < self._speech[-1][1]:
                raise ValueError("speech ranges must be sorted and must not overlap")
            self._speech.append((a, b))
            self._cumulative.append((self._cumulative[-1] if self._cumulative else 0.0) + b - a)
        released: list[Range] = []
        while True:
            goal = self._before + self.share
            # Decided when some range that ends past goal + tolerance is not the last one seen.
            horizon = goal + TOLERANCE * self.share
            if len(self._speech) < 2 or self._cumulative[-2] <= horizon:
                return released
            best = _choose_cut(self._speech, self._cumulative, self._last, goal, self.share)
            cut = (self._speech[best][1] + self._speech[best + 1][0]) / 2
            released.append((self._start, cut))
            self._start, self._before, self._last = cut, self._cumulative[best], best

    def finish(self, duration: float) -> list[Range]:
        """The chunk from the last cut to the end of the audio (none if the audio ends there)."""
        return [(self._start, duration)] if duration > self._start else []
