"""Measure an audio codec on a corpus split at several bitrates (the numbers that go in model cards)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
import torchaudio
from tqdm import tqdm

from mmtok.codecs.base import Tokenizer
from mmtok.data.audio import AudioDataModule
from mmtok.media import write_spectrogram_png, write_wav
from mmtok.metrics import bitrate, codec_metrics, error_rate


def default_quantizer_counts(num_codebooks: int) -> list[int]:
    """1, 2, 4, ... up to and including ``num_codebooks``."""
    counts = [n for n in (1, 2, 4, 8, 16, 32) if n < num_codebooks]
    return counts + [num_codebooks]


@torch.no_grad()
def evaluate_codec(codec: Tokenizer, data: str | Path, *, split: str = "test", max_items: int | None = None,
                   quantizers: Sequence[int] | None = None, examples_dir: str | Path | None = None,
                   num_examples: int = 3, judge=None) -> list[dict]:
    """Mean mel distance, multi-resolution STFT distance and SI-SDR of reconstructions, one row per
    number of quantizers, over whole utterances of ``split`` (one at a time, so no padding).

    With ``judge`` (a :class:`mmtok.asr.PhonemeRecognizer`) each row also has ``per``: the phoneme
    error rate of the judge's transcripts of the reconstructions against the corpus' phonemes, i.e.
    how intelligible the tokens are. With ``examples_dir`` the first ``num_examples`` originals and
    reconstructions are written there as wav + spectrogram png.
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    quantizers = list(quantizers or default_quantizer_counts(codec.num_codebooks))
    codec = codec.eval()
    if judge is not None:
        judge.eval()
    module = AudioDataModule(path=str(data), sample_rate=codec.sample_rate, valid_batch_size=1,
                             max_valid_items=max_items)
    module.setup("test" if split == "test" else "validate")
    loader = module.test_dataloader() if split == "test" else module.val_dataloader()
    sums: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    references: list[list[str]] = []
    hypotheses: dict[int, list[list[str]]] = defaultdict(list)
    count = 0
    for index, batch in enumerate(tqdm(loader, desc=f"evaluate {split}", unit="utt")):
        if max_items is not None and index >= max_items:
            break
        audio = batch["audio"]
        tokens = codec.encode(audio)
        if judge is not None:
            references.append(_reference_phonemes(batch, data, split))
        for n in quantizers:
            reconstruction = codec.decode(tokens, num_quantizers=n)
            for key, value in codec_metrics(audio, reconstruction, sample_rate=codec.sample_rate).items():
                sums[n][key] += float(value)
            if judge is not None:
                hypotheses[n].append(_transcribe(judge, reconstruction, codec.sample_rate))
            if examples_dir is not None and index < num_examples:
                _write_example(Path(examples_dir), index, audio, reconstruction, n, codec.sample_rate,
                               with_original=n == quantizers[0])
        count += 1
    if count == 0:
        raise ValueError(f"{data}: the {split} split is empty")
    rows = [_row(codec, n, sums[n], count) for n in quantizers]
    if judge is not None:
        for row in rows:
            row["per"] = error_rate(references, hypotheses[row["quantizers"]])
    return rows


def _reference_phonemes(batch: dict, data: str | Path, split: str) -> list[str]:
    if "phonemes" not in batch:
        raise ValueError(f"{data}: the {split} split has no 'phonemes' for the judge to score against")
    return batch["phonemes"][0].split()


def _transcribe(judge, audio: torch.Tensor, sample_rate: int) -> list[str]:
    if sample_rate != judge.sample_rate:
        audio = torchaudio.functional.resample(audio, sample_rate, judge.sample_rate)
    return judge.transcribe(audio)[0].split()


def _row(codec: Tokenizer, n: int, sums: dict[str, float], count: int) -> dict:
    kbps = bitrate(num_quantizers=n, codebook_size=codec.codebook_sizes[:n], frame_rate=codec.frame_rate) / 1000
    return {"quantizers": n, "kbps": kbps, **{k: v / count for k, v in sums.items()}, "utterances": count}


def _write_example(folder: Path, index: int, audio: torch.Tensor, reconstruction: torch.Tensor, n: int,
                   sample_rate: int, *, with_original: bool) -> None:
    if with_original:
        write_wav(folder / f"{index}_original.wav", audio[0], sample_rate=sample_rate)
    write_wav(folder / f"{index}_recon_{n}q.wav", reconstruction[0], sample_rate=sample_rate)
    write_spectrogram_png(folder / f"{index}_recon_{n}q.png", reconstruction[0], sample_rate=sample_rate,
                          reference=audio[0], title=f"utterance {index}: original vs {n} quantizers")
