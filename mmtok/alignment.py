"""Phoneme durations from a CTC recognizer: forced alignment, frames per phoneme, and the checks.

The shipped phoneme recognizer (:mod:`mmtok.asr`) is a CTC model at 50 frames/s, the codecs' frame
rate, so the Viterbi path of an utterance's known phonemes through its log-probabilities (CTC
forced alignment, :func:`torchaudio.functional.forced_align`; Graves et al. 2006, Kürzinger et al.
2020) says which frames speak which phoneme. A CTC path is peaky: a phoneme holds a frame or two
and blanks fill the rest. Blank frames go to a neighbour: phoneme k owns the frames from its first
aligned frame up to the next phoneme's first one (leading blanks go to the first phoneme), so the
counts sum exactly to the recognizer's frame count (:func:`durations_from_path`).

The codec may count a frame or two more or fewer (padding, rounding): that difference goes on the
last phoneme (:func:`reconcile`). A larger difference, more phonemes (plus repeats, which CTC must
separate by a blank) than frames, or a phoneme the recognizer does not know is a *bad alignment*:
:class:`Alignment` says why and holds no durations, so the caller counts and lists it.

Shapes: ``log_probs: FloatTensor [B, T, V + 1]`` (index 0 the blank), ``path: LongTensor [T]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchaudio

from mmtok.asr import BLANK, PhonemeRecognizer
from mmtok.media import pad_audio

TOLERANCE = 2  # codec frames more or fewer than the recognizer's that reconciliation absorbs


@dataclass(frozen=True)
class Alignment:
    """One utterance's alignment: ``durations`` (frames per phoneme, summing to the codec's frame
    count) or None and the ``reason`` it is bad; ``shift``: codec minus recognizer frames, put on
    the last phoneme (0: the sum matched without reconciliation)."""

    durations: list[int] | None
    reason: str | None = None
    shift: int = 0

    @property
    def ok(self) -> bool:
        return self.durations is not None


def phoneme_starts(path: torch.Tensor) -> torch.Tensor:
    """The first frame of each aligned symbol on a CTC path [T]: a frame whose label is not blank
    and differs from the previous frame's (a repeated symbol is two only with a blank between)."""
    path = path.reshape(-1)
    previous = torch.cat([path.new_full((1,), BLANK), path[:-1]])
    return ((path != BLANK) & (path != previous)).nonzero().reshape(-1)


def durations_from_path(path: torch.Tensor, num_phonemes: int) -> list[int]:
    """Frames per phoneme from a forced-alignment path [T] of ``num_phonemes`` symbols: phoneme k
    owns frames ``[start_k, start_{k+1})``, the first from frame 0, the last to the end; the sum is T."""
    starts = phoneme_starts(path)
    if len(starts) != num_phonemes:
        raise ValueError(f"the path holds {len(starts)} symbols, expected {num_phonemes}")
    bounds = torch.cat([starts.new_zeros(1), starts[1:], starts.new_full((1,), path.numel())])
    return (bounds[1:] - bounds[:-1]).tolist()


def reconcile(durations: Sequence[int], frames: int, *, tolerance: int = TOLERANCE) -> list[int] | None:
    """``durations`` moved onto ``frames`` frames: a difference of at most ``tolerance`` is added to
    (or taken from) the last phoneme, which keeps at least one frame (what is left is taken from the
    ones before); None when it is larger or there are fewer frames than phonemes."""
    difference = frames - sum(durations)
    if abs(difference) > tolerance or frames < len(durations):
        return None
    out = list(durations)
    out[-1] += difference
    for k in range(len(out) - 1, 0, -1):  # a negative last phoneme borrows from its left
        if out[k] >= 1:
            break
        out[k - 1] -= 1 - out[k]
        out[k] = 1
    return out


def ctc_frames_needed(ids: Sequence[int]) -> int:
    """The fewest frames a CTC path of ``ids`` takes: one per symbol plus a blank between repeats."""
    return len(ids) + sum(a == b for a, b in zip(ids[:-1], ids[1:]))


def align_one(log_probs: torch.Tensor, ids: torch.Tensor, *, frames: int, tolerance: int = TOLERANCE) -> Alignment:
    """One utterance: ``log_probs [T, V + 1]`` (its own frames only), phoneme ids [P] (1..V), and the
    codec's frame count -> :class:`Alignment`."""
    needed = ctc_frames_needed(ids.tolist())
    if needed > log_probs.shape[0]:
        return Alignment(None, f"{len(ids)} phonemes need {needed} frames, the recognizer has {log_probs.shape[0]}")
    try:
        path, _ = torchaudio.functional.forced_align(log_probs[None].float(), ids[None].to(torch.int32), blank=BLANK)
    except RuntimeError as error:  # no path through the frames (torchaudio's own check)
        return Alignment(None, f"forced alignment failed: {' '.join(str(error).split())}")
    counted = durations_from_path(path[0], len(ids))
    durations = reconcile(counted, frames, tolerance=tolerance)
    if durations is None:
        return Alignment(None, f"the codec has {frames} frames, the recognizer {sum(counted)} (more than "
                               f"{tolerance} apart) for {len(ids)} phonemes")
    return Alignment(durations, shift=frames - sum(counted))


class PhonemeAligner:
    """Forced alignment of utterances with a :class:`~mmtok.asr.PhonemeRecognizer` (run in eval
    mode, batched, on its own device): waveforms + phoneme strings + codec frame counts ->
    :class:`Alignment` s. ``tolerance``: see :func:`reconcile`."""

    def __init__(self, recognizer: PhonemeRecognizer, *, tolerance: int = TOLERANCE, batch_size: int = 16):
        if not isinstance(recognizer, PhonemeRecognizer):
            raise ValueError(f"an aligner needs a PhonemeRecognizer, got a {type(recognizer).__name__}")
        self.recognizer, self.tolerance, self.batch_size = recognizer.eval(), tolerance, batch_size
        self._known = set(recognizer.phonemes)

    @classmethod
    def from_pretrained(cls, source: str, **options) -> PhonemeAligner:
        from mmtok.hub import load_pretrained

        return cls(load_pretrained(source), **options)

    @property
    def sample_rate(self) -> int:
        return self.recognizer.sample_rate

    @torch.no_grad()
    def align(self, audio: Sequence[torch.Tensor], phonemes: Sequence[str], frames: Sequence[int]) -> list[Alignment]:
        """Waveforms ``[1, N_i]`` at :attr:`sample_rate`, their phoneme strings and codec frame counts."""
        if not len(audio) == len(phonemes) == len(frames):
            raise ValueError(f"{len(audio)} waveforms, {len(phonemes)} phoneme strings, {len(frames)} frame counts")
        out: list[Alignment] = []
        for start in range(0, len(audio), self.batch_size):
            out += self._align_batch(audio[start:start + self.batch_size], phonemes[start:start + self.batch_size],
                                     frames[start:start + self.batch_size])
        return out

    def _align_batch(self, audio, phonemes, frames) -> list[Alignment]:
        device = next(self.recognizer.parameters()).device
        batch, lengths = pad_audio(audio)
        log_probs, frame_lengths = self.recognizer(batch.to(device), lengths.to(device))
        log_probs, frame_lengths = log_probs.cpu(), frame_lengths.cpu()
        out = []
        for row, (text, count) in enumerate(zip(phonemes, frames)):
            unknown = sorted({p for p in text.split() if p not in self._known})
            if unknown:
                out.append(Alignment(None, f"phonemes {' '.join(unknown)} are not in the recognizer's inventory"))
            elif not text.split():
                out.append(Alignment(None, "no phonemes"))
            else:
                out.append(align_one(log_probs[row, : int(frame_lengths[row])], self.recognizer.encode_phonemes(text),
                                     frames=int(count), tolerance=self.tolerance))
        return out
