"""A small CTC phoneme recognizer: the embedded semantic teacher of X-Codec and the judge of intelligibility.

Log-mel features (10 ms hop) -> two 1-D convolutions (the second with stride 2, so the encoder runs
at 50 frames/s, the RVQ codecs' frame rate) -> a bidirectional transformer (:mod:`mmtok.nn`) -> a
linear layer over the phoneme inventory plus the CTC blank (Graves et al., 2006). Decoding is greedy
CTC: the best symbol per frame, repeats merged, blanks removed (Graves et al. 2006, sec. 3.2 best path).

Shapes: ``audio: FloatTensor [B, 1, N]`` at ``sample_rate``; ``lengths: LongTensor [B]`` in samples;
features ``[B, D, T]`` and log-probabilities ``[B, T, V + 1]`` with ``T = ceil(N / 320)`` at 16 kHz.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from einops import rearrange
from torch import nn

from mmtok.hub import HubMixin
from mmtok.nn import Transformer

BLANK = 0


def phoneme_inventory(source: str | Path) -> list[str]:
    """Sorted phoneme symbols used in a corpus: a folder with ``manifest.jsonl``, the manifest itself,
    or a JSON file holding a list of symbols. Phoneme strings are space-separated symbols."""
    from mmtok.data.manifest import manifest_path, read_manifest

    manifest = manifest_path(source)
    if not manifest.is_file():
        raise FileNotFoundError(f"phonemes: {source} has no manifest.jsonl; build the corpus first, "
                                f"e.g. `mmtok data speech --out {source}`")
    if manifest.suffix == ".json":
        return list(json.loads(manifest.read_text()))
    symbols: set[str] = set()
    for entry in read_manifest(manifest):
        if "phonemes" not in entry:
            raise ValueError(f"{manifest}: an entry has no 'phonemes' field to build the inventory from: {entry}")
        symbols.update(entry["phonemes"].split())
    return sorted(symbols)


def centred_log_mel(mel: torchaudio.transforms.MelSpectrogram, audio: torch.Tensor, *,
                    num_frames: int) -> torch.Tensor:
    """The judges' front end: audio [B, N] -> natural-log mel [B, n_mels, num_frames] (clamped at 1e-5).

    ``mel`` is built with ``center=False``; frame t's window (``mel.n_fft`` samples) is centred on hop t
    (samples [t · hop, (t + 1) · hop)): the audio is zero-padded by (n_fft - hop) // 2 on the left and
    as much as the last frame needs on the right, so N samples give ceil(N / hop) frames that see only
    those samples and zeros."""
    hop, n_fft = mel.hop_length, mel.n_fft
    left = (n_fft - hop) // 2
    needed = (num_frames - 1) * hop + n_fft
    audio = F.pad(audio, (left, max(0, needed - audio.shape[-1] - left)))
    return torch.log(mel(audio).clamp(min=1e-5))


class PhonemeRecognizer(nn.Module, HubMixin):
    """CTC phoneme recognizer. ``phonemes`` is the inventory, or a corpus to read it from (the saved
    config always holds the list itself, so a Hub folder is self-contained)."""

    def __init__(
        self,
        *,
        phonemes: list[str] | str,
        sample_rate: int = 16000,
        n_mels: int = 80,
        dim: int = 192,
        num_layers: int = 4,
        num_heads: int = 4,
        dropout: float = 0.1,
        freq_mask: int = 15,
        time_mask: int = 20,
    ):
        super().__init__()
        if isinstance(phonemes, str):
            phonemes = phoneme_inventory(phonemes)
            self.record_config(phonemes=phonemes)
        if len(set(phonemes)) != len(phonemes) or not phonemes:
            raise ValueError("phonemes must be a non-empty list of distinct symbols")
        self.phonemes = list(phonemes)
        self._index = {p: i + 1 for i, p in enumerate(self.phonemes)}  # 0 is the CTC blank
        self.sample_rate = sample_rate
        self.hop_length = sample_rate // 100
        self.n_fft = 512 * sample_rate // 16000
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=self.n_fft, win_length=25 * sample_rate // 1000,
            hop_length=self.hop_length, n_mels=n_mels, center=False)
        self.spec_augment = nn.Sequential(torchaudio.transforms.FrequencyMasking(freq_mask),
                                          torchaudio.transforms.TimeMasking(time_mask))
        self.input_norm = nn.LayerNorm(n_mels)
        self.frontend = nn.Sequential(
            nn.Conv1d(n_mels, dim, 3, padding=1), nn.GELU(),
            nn.Conv1d(dim, dim, 3, stride=2, padding=1), nn.GELU(),
        )
        self.encoder = Transformer(dim=dim, num_layers=num_layers, num_heads=num_heads, dropout=dropout)
        self.head = nn.Linear(dim, len(self.phonemes) + 1)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / (2 * self.hop_length)

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Encoder frames for signals of ``num_samples``: ceil(N / (2 · hop))."""
        return torch.div(num_samples + 2 * self.hop_length - 1, 2 * self.hop_length, rounding_mode="floor")

    # -- features --------------------------------------------------------------------------------
    def _log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [B, 1, N] -> log-mel [B, n_mels, 2T] with T = ceil(N / (2 · hop)), frames centred on hops."""
        num_frames = 2 * math.ceil(audio.shape[-1] / (2 * self.hop_length))
        return centred_log_mel(self.mel, audio[:, 0], num_frames=num_frames)

    def features(self, audio: torch.Tensor, lengths: torch.Tensor | None = None, *,
                 attention_window: int | None = None):
        """Encoder output (the semantic features): ([B, D, T], frame lengths [B]). ``attention_window``
        limits the encoder's attention to ± that many frames per layer (see :attr:`context_frames`)."""
        if audio.dim() != 3 or audio.shape[1] != 1:
            raise ValueError(f"audio must be [B, 1, N], got shape {tuple(audio.shape)}")
        mel = self._log_mel(audio)
        if self.training:
            mel = self.spec_augment(mel)
        x = self.frontend(rearrange(self.input_norm(rearrange(mel, "b m t -> b t m")), "b t m -> b m t"))
        if lengths is None:
            lengths = torch.full((audio.shape[0],), audio.shape[-1], device=audio.device)
        frame_lengths = self.num_frames(lengths).clamp(max=x.shape[-1])
        valid = torch.arange(x.shape[-1], device=x.device)[None, :] < frame_lengths[:, None]
        x = self.encoder(rearrange(x, "b d t -> b t d"), valid=valid, window=attention_window)
        return rearrange(x, "b t d -> b d t"), frame_lengths

    def context_frames(self, attention_window: int | None) -> int | None:
        """Encoder frames on each side of a frame that its features depend on: the log-mel window and
        the two convolutions (2 frames), plus ``attention_window`` per transformer layer; None
        (unbounded) with full attention."""
        if attention_window is None:
            return None
        return 2 + len(self.encoder.blocks) * attention_window

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None):
        """(log-probabilities [B, T, V + 1], frame lengths [B]); index 0 is the blank."""
        features, frame_lengths = self.features(audio, lengths)
        return self.head(rearrange(features, "b d t -> b t d")).log_softmax(-1), frame_lengths

    # -- symbols ---------------------------------------------------------------------------------
    def encode_phonemes(self, phonemes: str) -> torch.Tensor:
        """A space-separated phoneme string -> LongTensor of ids (1..V)."""
        unknown = [p for p in phonemes.split() if p not in self._index]
        if unknown:
            raise ValueError(f"phonemes {sorted(set(unknown))} are not in this recognizer's inventory")
        return torch.tensor([self._index[p] for p in phonemes.split()], dtype=torch.long)

    def greedy_decode(self, log_probs: torch.Tensor, frame_lengths: torch.Tensor) -> list[str]:
        """Best path per frame, repeats merged, blanks dropped -> space-separated phoneme strings."""
        best = log_probs.argmax(-1)
        out = []
        for ids, length in zip(best, frame_lengths):
            ids = torch.unique_consecutive(ids[: int(length)])
            out.append(" ".join(self.phonemes[i - 1] for i in ids.tolist() if i != BLANK))
        return out

    @torch.no_grad()
    def transcribe(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> list[str]:
        log_probs, frame_lengths = self(audio, lengths)
        return self.greedy_decode(log_probs, frame_lengths)


@torch.no_grad()
def evaluate_recognizer(recognizer: PhonemeRecognizer, data: str | Path, *, split: str = "test",
                        max_items: int | None = None, batch_size: int = 8) -> dict:
    """Phoneme error rate of greedy CTC transcripts on whole utterances of ``split``."""
    from mmtok.data.audio import AudioDataModule
    from mmtok.metrics import error_rate

    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    module = AudioDataModule(path=str(data), sample_rate=recognizer.sample_rate, valid_batch_size=batch_size,
                             max_valid_items=max_items)
    module.setup("test" if split == "test" else "validate")
    loader = module.test_dataloader() if split == "test" else module.val_dataloader()
    recognizer = recognizer.eval()
    references, hypotheses = [], []
    for batch in loader:
        if batch is None:
            continue
        if "phonemes" not in batch:
            raise ValueError(f"{data}: the {split} split has no 'phonemes' to score against")
        references += [p.split() for p in batch["phonemes"]]
        hypotheses += [h.split() for h in recognizer.transcribe(batch["audio"], batch["lengths"])]
        if max_items is not None and len(references) >= max_items:
            references, hypotheses = references[:max_items], hypotheses[:max_items]
            break
    return {"per": error_rate(references, hypotheses), "utterances": len(references)}
