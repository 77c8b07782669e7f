"""Several plain faster-whisper decodes run in lockstep, their model calls batched together.

Why: sequential decoding (`WhisperModel.transcribe`) is the accurate way to decode long speech:
each 30 s window is conditioned on the text before it and the window slides to the last complete
segment, so no sentence is cut. It is also slow, because every window is its own model call.
faster-whisper's `BatchedInferencePipeline` is fast but gives up both properties (it decodes
fixed chunks without context), and on held-out long files it lost 4-13 WER points.

Lockstep keeps faster-whisper's own sequential loop untouched and only changes *who runs the
model*: the file is cut at its longest pauses into N chunks, each chunk is decoded by the real
`WhisperModel.transcribe` in its own thread, and every call those threads make to the encoder
and the decoder is collected and run as one batch once every live thread is waiting. Each chunk
therefore gets exactly what plain faster-whisper would produce on it (context, seeking, fallback,
hallucination checks, word timestamps); the only difference from decoding the whole file is that
context restarts at the N - 1 cuts, which fall in pauses.

Pure: no gRPC. Works with any CTranslate2 Whisper model faster-whisper loads; encoder outputs are
brought to host memory (as faster-whisper does for multi-GPU) so they can be regrouped.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from asr_mesh.services.common.chunking import plan_chunks

__all__ = ["LockstepBatcher", "LockstepCancelled", "plan_chunks", "transcribe_chunks"]


class LockstepCancelled(Exception):
    """Raised inside a chunk's thread when the consumer went away."""


class _Encoding:
    """A window's encoder input, computed in the next batch; `output` is set once it has run."""

    __slots__ = ("features", "output")

    def __init__(self, features: np.ndarray):
        self.features = features
        self.output: np.ndarray | None = None

    def encoded(self) -> np.ndarray:
        """The encoder's output; asked only once the batch that encoded this window has run."""
        if self.output is None:
            raise RuntimeError("a window's encoder output was asked for before it was computed")
        return self.output


@dataclass
class _Call:
    encoding: _Encoding
    prompt: list[int]
    """generate: the prompt; align: the text tokens to align."""
    kwargs: dict
    key: tuple
    kind: str = "generate"
    num_frames: int = 0
    result: Any = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class LockstepBatcher:
    """Collects `generate` calls from `streams` threads and runs them as batches.

    A batch runs when every live thread is waiting on a call, so the threads advance together.
    Calls are grouped by kind (decode, or word-timestamp alignment) and arguments (a thread in
    temperature fallback samples, the others search with a beam); each group is one batched
    encode + generate (or align).
    """

    model: Any  # ctranslate2.models.Whisper
    streams: int
    on_batch: Callable[[int], None] = lambda size: None
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _pending: list[_Call] = field(default_factory=list)

    sot: int = -1
    """The <|startoftranscript|> token id; prompts are aligned on it (see `_align_prompts`)."""

    cancelled: bool = False

    def cancel(self) -> None:
        """Fail every waiting and future call, so the threads stop at their next model call."""
        with self._cond:
            self.cancelled = True
            for call in self._pending:
                call.error, call.done = LockstepCancelled(), True
            self._pending = []
            self._cond.notify_all()

    def generate(self, encoding: _Encoding, prompt: list[int], kwargs: dict):
        has_context = self.sot >= 0 and prompt.index(self.sot) > 0
        key = ("generate", has_context, *_key(kwargs))
        return self._submit(_Call(encoding, prompt, kwargs, key))

    def align(self, encoding: _Encoding, text_tokens: list[int], num_frames: int, kwargs: dict):
        """Word-timestamp alignment of one window's text, batched like `generate`."""
        return self._submit(
            _Call(
                encoding,
                text_tokens,
                kwargs,
                ("align", *_key(kwargs)),
                kind="align",
                num_frames=num_frames,
            )
        )

    def _submit(self, call: _Call):
        if self.cancelled:
            raise LockstepCancelled()
        with self._cond:
            self._pending.append(call)
            self._maybe_run()
            while not call.done:
                self._cond.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def leave(self) -> None:
        """A thread finished (or failed): the others no longer wait for it."""
        with self._cond:
            self.streams -= 1
            self._maybe_run()

    def _maybe_run(self) -> None:
        if not self._pending or len(self._pending) < self.streams:
            return
        calls, self._pending = self._pending, []
        groups: dict[tuple, list[_Call]] = {}
        for call in calls:
            groups.setdefault(call.key, []).append(call)
        for group in groups.values():
            try:
                self._run(group)
            except BaseException as error:  # handed to the waiting threads, raised there
                for call in group:
                    call.error = error
            for call in group:
                call.done = True
        self._cond.notify_all()

    def _run(self, group: list[_Call]) -> None:
        import ctranslate2

        fresh = [c.encoding for c in group if c.encoding.output is None]
        if fresh:
            features = np.stack([e.features for e in fresh]).astype(np.float32, copy=False)
            out = self.model.encode(ctranslate2.StorageView.from_array(features), to_cpu=True)
            out = np.asarray(out)
            for k, encoding in enumerate(fresh):
                encoding.output = out[k]
        batch = ctranslate2.StorageView.from_array(
            np.ascontiguousarray(np.stack([c.encoding.encoded() for c in group]))
        )
        if group[0].kind == "align":
            kwargs = dict(group[0].kwargs)
            start = kwargs.pop("start_sequence")
            results = self.model.align(
                batch, start, [c.prompt for c in group], [c.num_frames for c in group], **kwargs
            )
        else:
            self.on_batch(len(group))
            prompts = _align_prompts([c.prompt for c in group], self.sot)
            results = self.model.generate(batch, prompts, **group[0].kwargs)
        for call, result in zip(group, results):
            call.result = result


def _align_prompts(prompts: list[list[int]], sot: int) -> list[list[int]]:
    """Give every prompt of a batch the same number of context tokens before <|sot|>.

    CTranslate2 decodes a batch only when <|startoftranscript|> sits at the same position in
    every prompt. Prompts are [<|startofprev|>, context..., <|sot|>, ...]; the longer contexts
    keep their most recent tokens. Calls with and without context are never batched together,
    and after the first window every stream's context is usually at the model's cap (223 tokens),
    so this trims only while contexts are still growing.
    """
    if sot < 0 or len(prompts) < 2:
        return prompts
    positions = [p.index(sot) for p in prompts]
    keep = min(positions)
    if keep == max(positions):
        return prompts
    out = []
    for prompt, position in zip(prompts, positions):
        if position > keep and keep > 0:
            prompt = [prompt[0], *prompt[position - keep + 1 :]]
        out.append(prompt)
    return out


def _key(kwargs: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))


class _BatchedModel:
    """Stands in for the CTranslate2 model inside one thread's `WhisperModel` copy."""

    def __init__(self, real, batcher: LockstepBatcher):
        self._real = real
        self._batcher = batcher

    def generate(self, encoder_output, prompts, **kwargs):
        if not isinstance(encoder_output, _Encoding) or len(prompts) != 1:
            return self._real.generate(encoder_output, prompts, **kwargs)
        return [self._batcher.generate(encoder_output, prompts[0], kwargs)]

    def align(self, encoder_output, start_sequence, text_tokens, num_frames, **kwargs):
        if not isinstance(encoder_output, _Encoding) or len(text_tokens) != 1:
            return self._real.align(
                _storage(encoder_output), start_sequence, text_tokens, num_frames, **kwargs
            )
        frames = num_frames[0] if isinstance(num_frames, list) else num_frames
        result = self._batcher.align(
            encoder_output,
            list(text_tokens[0]),
            int(frames),
            {"start_sequence": list(start_sequence), **kwargs},
        )
        return [result]

    def detect_language(self, encoder_output, *args, **kwargs):
        return self._real.detect_language(_storage(encoder_output), *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._real, name)


def _storage(encoder_output):
    if not isinstance(encoder_output, _Encoding):
        return encoder_output
    import ctranslate2

    if encoder_output.output is None:
        raise RuntimeError("encoder output used before its batch ran")
    return ctranslate2.StorageView.from_array(np.ascontiguousarray(encoder_output.output[None]))


def _lockstep_copy(model, batcher: LockstepBatcher):
    """A shallow copy of a faster-whisper `WhisperModel` whose model calls go through `batcher`."""
    clone = copy.copy(model)
    clone.model = _BatchedModel(model.model, batcher)

    def encode(features: np.ndarray) -> _Encoding:
        return _Encoding(features[0] if features.ndim == 3 else features)

    clone.encode = encode
    return clone


def transcribe_chunks(
    model,
    chunks: list[np.ndarray],
    kwargs: dict,
    on_batch: Callable[[int], None] = lambda size: None,
) -> Iterator[tuple[int, object]]:
    """Run `model.transcribe(chunk, **kwargs)` on every chunk at once, batching model calls.

    Yields `(chunk index, faster-whisper Segment)` with chunk-relative times, chunk 0's first:
    a later chunk's segments are held until every earlier chunk has finished, so the caller sees
    them in time order. `("info", index, TranscriptionInfo)` is not yielded; language detection
    must be done by the caller (pass `language`).
    """
    if not chunks:
        return
    batcher = LockstepBatcher(
        model.model,
        len(chunks),
        on_batch,
        sot=model.hf_tokenizer.token_to_id("<|startoftranscript|>"),
    )
    results: list[list] = [[] for _ in chunks]
    finished = [threading.Event() for _ in chunks]
    errors: list[BaseException | None] = [None] * len(chunks)
    lock = threading.Lock()

    def run(index: int) -> None:
        try:
            segments, _ = _lockstep_copy(model, batcher).transcribe(chunks[index], **kwargs)
            for segment in segments:
                with lock:
                    results[index].append(segment)
        except LockstepCancelled:
            pass
        except BaseException as error:  # re-raised in the caller's thread
            errors[index] = error
        finally:
            batcher.leave()
            finished[index].set()

    threads = [
        threading.Thread(target=run, args=(i,), name=f"lockstep-{i}", daemon=True)
        for i in range(len(chunks))
    ]
    for thread in threads:
        thread.start()
    try:
        for index in range(len(chunks)):
            sent = 0
            while True:
                done = finished[index].wait(0.05)
                with lock:
                    fresh = results[index][sent:]
                sent += len(fresh)
                for segment in fresh:
                    yield index, segment
                if done and sent == len(results[index]):
                    break
            error = errors[index]
            if error is not None:
                raise error
    finally:
        batcher.cancel()  # a no-op once every thread has finished
        for thread in threads:
            thread.join()
