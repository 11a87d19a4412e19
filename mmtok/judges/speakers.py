"""A small speaker embedding model: the judge of whose voice generated speech is in.

The speech counterpart of the digit classifier (:mod:`mmtok.judges.digits`): trained to tell the
corpus' speakers apart, its L2-normalised embedding scores *speaker similarity* (the cosine of two
utterances' embeddings), so "does prompted speech sound like its prompt" is a number, always reported
next to its floor, the cosine of two real utterances of the same speaker
(:func:`mmtok.metrics.audio.speaker_similarity`, ``bench/speaker_encoder.py``).

Architecture, an ECAPA-TDNN reduced to a few hundred thousand parameters (Desplanques et al. 2020,
"ECAPA-TDNN: emphasized channel attention, propagation and aggregation in TDNN based speaker
verification"):

- log-mel features with the phoneme recognizer's settings (25 ms windows, 10 ms hop:
  :func:`mmtok.asr.centred_log_mel`), minus the utterance's mean log-mel over its valid frames and
  bins (a gain normalisation: a louder copy has the same embedding, up to bins at the log floor);
- a 1-D convolution (kernel 5), then ``len(dilations)`` residual TDNN blocks: a dilated kernel-3
  convolution and a 1x1 one, each ReLU + BatchNorm, then squeeze-excitation (Hu et al. 2018) over
  the valid frames; the blocks' outputs are concatenated (multi-layer feature aggregation) and mixed
  by a 1x1 convolution to ``pool_channels``;
- attentive statistics pooling (Okabe et al. 2018, "Attentive statistics pooling for deep speaker
  embedding", eq. 5-8): one score per frame ``e_t = v^T tanh(W h_t + b) + k``, ``a = softmax(e)``
  over the valid frames, ``mu = sum_t a_t h_t``, ``sigma = sqrt(sum_t a_t h_t^2 - mu^2)``;
- BatchNorm, a linear layer from ``[mu; sigma]`` to the ``embedding_dim`` embedding, BatchNorm;
- the speaker head: one learned unit vector per training speaker; :meth:`forward` gives the cosine of
  the embedding to each (the logits of an additive angular margin softmax, Deng et al. 2019 "ArcFace";
  :mod:`mmtok.training.speakers`).

Padded frames are zeroed before every convolution and left out of every mean and of the pooling, so
in eval mode (as ``load_pretrained`` returns the model) padding an utterance does not change its
embedding.

Shapes: ``audio: FloatTensor [B, N]`` (or ``[B, 1, N]``, as batches and codecs hold it) at
``sample_rate``; ``lengths: LongTensor [B]`` of valid samples (None: all N); ``T = ceil(N / hop)``
frames; embeddings ``[B, embedding_dim]``; speaker logits ``[B, num_speakers]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torchaudio
from torch import nn

from mmtok.asr import centred_log_mel
from mmtok.errors import DataError
from mmtok.hub import HubMixin


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the valid frames: x [B, C, T], valid [B, 1, T] (float 0/1) -> [B, C, 1]."""
    return (x * valid).sum(-1, keepdim=True) / valid.sum(-1, keepdim=True).clamp(min=1)


class TDNNBlock(nn.Module):
    """Residual block: dilated conv (kernel 3) + ReLU + BN, 1x1 conv + ReLU + BN, squeeze-excitation."""

    def __init__(self, channels: int, *, dilation: int, se_channels: int):
        super().__init__()
        self.dilated = nn.Sequential(nn.Conv1d(channels, channels, 3, dilation=dilation, padding=dilation),
                                     nn.ReLU(), nn.BatchNorm1d(channels))
        self.pointwise = nn.Sequential(nn.Conv1d(channels, channels, 1), nn.ReLU(), nn.BatchNorm1d(channels))
        self.squeeze = nn.Sequential(nn.Linear(channels, se_channels), nn.ReLU(),
                                     nn.Linear(se_channels, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x [B, C, T], valid [B, 1, T] -> [B, C, T] (padded frames zero)."""
        h = self.pointwise(self.dilated(x * valid) * valid)
        scale = self.squeeze(masked_mean(h, valid)[..., 0])[..., None]  # [B, C, 1]
        return (x + h * scale) * valid


class AttentiveStatsPooling(nn.Module):
    """Okabe et al. 2018, eq. 5-8: attention-weighted mean and standard deviation over valid frames."""

    def __init__(self, channels: int, *, attention_dim: int):
        super().__init__()
        self.attention = nn.Sequential(nn.Conv1d(channels, attention_dim, 1), nn.Tanh(),
                                       nn.Conv1d(attention_dim, 1, 1))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x [B, C, T], valid [B, 1, T] -> [mu; sigma] [B, 2C]."""
        scores = self.attention(x).masked_fill(valid == 0, float("-inf"))  # [B, 1, T]
        weights = scores.softmax(-1)
        mean = (weights * x).sum(-1)  # [B, C]
        variance = (weights * x.square()).sum(-1) - mean.square()
        return torch.cat([mean, variance.clamp(min=1e-5).sqrt()], dim=-1)


class SpeakerEncoder(nn.Module, HubMixin):
    """Utterances -> L2-normalised speaker embeddings, and cosine logits over the training speakers.

    ``speakers`` is the list of training speaker names, or a corpus (a folder with manifest.jsonl)
    whose ``speaker`` values are read (the saved config always holds the list, so a Hub folder is
    self-contained)."""

    def __init__(
        self,
        *,
        speakers: Sequence[str] | str,
        sample_rate: int = 16000,
        n_mels: int = 64,
        channels: int = 128,
        dilations: Sequence[int] = (2, 3, 4),
        se_channels: int = 32,
        pool_channels: int = 256,
        attention_dim: int = 64,
        embedding_dim: int = 128,
        freq_mask: int = 8,
        time_mask: int = 10,
    ):
        super().__init__()
        if isinstance(speakers, str):
            from mmtok.conditioning.conditions import manifest_values

            speakers = manifest_values(speakers, "speaker")
            self.record_config(speakers=speakers)
        speakers = [str(name) for name in speakers]
        if len(speakers) < 2 or len(set(speakers)) != len(speakers):
            raise ValueError(f"SpeakerEncoder: speakers must be at least 2 distinct names, got {speakers}")
        if sample_rate < 8000 or not dilations or min(dilations) < 1 or min(channels, embedding_dim) < 1:
            raise ValueError(f"SpeakerEncoder: need sample_rate >= 8000, dilations >= 1 and positive widths, got "
                             f"{sample_rate}, {list(dilations)}, channels {channels}, embedding_dim {embedding_dim}")
        self.speakers = speakers
        self._index = {name: i for i, name in enumerate(speakers)}
        self.sample_rate = sample_rate
        self.hop_length = sample_rate // 100
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=512 * sample_rate // 16000, win_length=25 * sample_rate // 1000,
            hop_length=self.hop_length, n_mels=n_mels, center=False)
        self.spec_augment = nn.Sequential(torchaudio.transforms.FrequencyMasking(freq_mask),
                                          torchaudio.transforms.TimeMasking(time_mask))
        self.stem = nn.Sequential(nn.Conv1d(n_mels, channels, 5, padding=2), nn.ReLU(), nn.BatchNorm1d(channels))
        self.blocks = nn.ModuleList(TDNNBlock(channels, dilation=d, se_channels=se_channels) for d in dilations)
        self.aggregate = nn.Sequential(nn.Conv1d(channels * len(dilations), pool_channels, 1), nn.ReLU(),
                                       nn.BatchNorm1d(pool_channels))
        self.pooling = AttentiveStatsPooling(pool_channels, attention_dim=attention_dim)
        self.project = nn.Sequential(nn.BatchNorm1d(2 * pool_channels), nn.Linear(2 * pool_channels, embedding_dim),
                                     nn.BatchNorm1d(embedding_dim))
        self.centres = nn.Parameter(torch.randn(len(speakers), embedding_dim) / embedding_dim ** 0.5)

    @property
    def embedding_dim(self) -> int:
        return self.centres.shape[1]

    @property
    def num_speakers(self) -> int:
        return len(self.speakers)

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Feature frames of signals of ``num_samples``: ceil(N / hop)."""
        return torch.div(num_samples + self.hop_length - 1, self.hop_length, rounding_mode="floor")

    def speaker_ids(self, names: Sequence[str]) -> torch.Tensor:
        """Training speaker names -> LongTensor [B] of their indices in :attr:`speakers`."""
        unknown = sorted({str(name) for name in names} - set(self._index))
        if unknown:
            raise DataError(f"SpeakerEncoder: speakers {unknown} are not among its training speakers {self.speakers}")
        return torch.tensor([self._index[str(name)] for name in names], dtype=torch.long)

    def _check(self, audio: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """audio [B, N] or [B, 1, N] -> (audio [B, N] zeroed past each length, lengths [B])."""
        if audio.dim() == 3 and audio.shape[1] == 1:
            audio = audio[:, 0]
        if audio.dim() != 2 or audio.shape[0] < 1 or audio.shape[1] < 1:
            raise DataError(f"SpeakerEncoder: audio must be [B, N] or [B, 1, N] with B, N >= 1, got "
                            f"{tuple(audio.shape)}")
        batch, total = audio.shape
        if lengths is None:
            lengths = torch.full((batch,), total, dtype=torch.long, device=audio.device)
        lengths = torch.as_tensor(lengths, dtype=torch.long, device=audio.device)
        if lengths.shape != (batch,) or bool((lengths < 1).any()) or bool((lengths > total).any()):
            raise DataError(f"SpeakerEncoder: lengths must be [B={batch}] with values in [1, {total}], got "
                            f"{lengths.tolist()}")
        inside = torch.arange(total, device=audio.device)[None, :] < lengths[:, None]
        return audio.to(self.centres.dtype) * inside, lengths

    def embedding(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The unnormalised embedding [B, embedding_dim] (what training differentiates)."""
        audio, lengths = self._check(audio, lengths)
        frames = self.num_frames(lengths)  # [B]
        total = int(self.num_frames(torch.tensor(audio.shape[-1])))
        valid = (torch.arange(total, device=audio.device)[None, :] < frames[:, None])[:, None].float()  # [B, 1, T]
        mel = centred_log_mel(self.mel, audio, num_frames=total)  # [B, n_mels, T]
        mel = (mel - masked_mean(mel, valid).mean(1, keepdim=True)) * valid  # gain normalisation
        if self.training:
            mel = self.spec_augment(mel)
        x = self.stem(mel) * valid  # [B, C, T]
        outputs = []
        for block in self.blocks:
            x = block(x, valid)
            outputs.append(x)
        x = self.aggregate(torch.cat(outputs, dim=1) * valid)  # [B, pool_channels, T]
        return self.project(self.pooling(x, valid))  # [B, embedding_dim]

    def embed(self, audio: torch.Tensor, lengths: torch.Tensor | None = None, *,
              sample_rate: int | None = None) -> torch.Tensor:
        """L2-normalised speaker embeddings [B, embedding_dim]. ``sample_rate``, when given, must be the
        encoder's (:func:`mmtok.metrics.audio.speaker_similarity` resamples)."""
        if sample_rate is not None and sample_rate != self.sample_rate:
            raise DataError(f"SpeakerEncoder: audio at {sample_rate} Hz, the encoder reads {self.sample_rate} Hz "
                            "(resample first, or use mmtok.metrics.audio.speaker_similarity)")
        return nn.functional.normalize(self.embedding(audio, lengths), dim=-1)

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine of unit-norm embeddings [B, D] to each training speaker's centre -> [B, num_speakers]."""
        centres = nn.functional.normalize(self.centres, dim=-1)
        return embeddings.to(centres) @ centres.T

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Cosine of each utterance's embedding to each training speaker's centre, FloatTensor [B, num_speakers]."""
        return self.cosines(self.embed(audio, lengths))

    @torch.no_grad()
    def classify(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The nearest training speaker of each utterance, LongTensor [B] (indices into :attr:`speakers`)."""
        return self(audio, lengths).argmax(-1)

    @torch.no_grad()
    def similarity(self, a: torch.Tensor, a_lengths: torch.Tensor | None, b: torch.Tensor,
                   b_lengths: torch.Tensor | None) -> torch.Tensor:
        """Cosine of the embeddings of ``a[i]`` and ``b[i]``, FloatTensor [B] in [-1, 1]."""
        if a.shape[0] != b.shape[0]:
            raise DataError(f"SpeakerEncoder.similarity: {a.shape[0]} utterances against {b.shape[0]}; pairs needed")
        return (self.embed(a, a_lengths) * self.embed(b, b_lengths)).sum(-1)


def verification_scores(embeddings: torch.Tensor, speakers: Sequence[str]) -> dict:
    """Same- and different-speaker cosines over every pair of distinct utterances: embeddings
    [N, D] (unit norm), one speaker name each -> ``{"same_cosine", "different_cosine", "eer",
    "same_pairs", "different_pairs"}`` (means; equal error rate of the cosine as a same-speaker
    score, :func:`mmtok.metrics.audio.equal_error_rate`)."""
    from mmtok.metrics.audio import equal_error_rate

    if embeddings.dim() != 2 or embeddings.shape[0] != len(speakers):
        raise DataError(f"verification_scores: need embeddings [N, D] for {len(speakers)} speakers, got "
                        f"{tuple(embeddings.shape)}")
    ids = {name: i for i, name in enumerate(dict.fromkeys(speakers))}
    labels = torch.tensor([ids[name] for name in speakers])
    embeddings = embeddings.detach().float()
    cosines = embeddings @ embeddings.T  # [N, N]
    upper = torch.triu(torch.ones_like(cosines, dtype=torch.bool), diagonal=1)
    same = (labels[:, None] == labels[None, :])[upper]
    scores = cosines[upper]
    if not bool(same.any()) or bool(same.all()):
        raise DataError(f"verification_scores: need two utterances of one speaker and two speakers, got {len(ids)} "
                        f"speaker(s) over {len(speakers)} utterances")
    return {"same_cosine": float(scores[same].mean()), "different_cosine": float(scores[~same].mean()),
            "eer": equal_error_rate(scores, same), "same_pairs": int(same.sum()), "different_pairs": int((~same).sum())}


@torch.no_grad()
def speaker_embeddings(encoder: SpeakerEncoder, data: str | Path, *, split: str = "test",
                       max_items: int | None = None, batch_size: int = 16) -> tuple[torch.Tensor, list[str]]:
    """Embeddings of the whole utterances of ``split`` of a speech corpus, in manifest order:
    (FloatTensor [N, D] unit norm, their speaker names); the first ``max_items`` with it."""
    from mmtok.data.audio import AudioDataModule

    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
    module = AudioDataModule(path=str(data), sample_rate=encoder.sample_rate, crop_seconds=None,
                             valid_batch_size=batch_size, max_valid_items=None)
    module.setup()
    dataset = module.datasets[split]
    if max_items is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(max_items, len(dataset))))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=module.collate)
    training = encoder.training
    encoder.eval()
    embeddings, speakers = [], []
    for batch in loader:
        if batch is None:
            continue
        if "speaker" not in batch:
            raise DataError(f"{data}: the {split} split has no 'speaker' per utterance to score against")
        embeddings.append(encoder.embed(batch["audio"], batch["lengths"]))
        speakers += [str(name) for name in batch["speaker"]]
    encoder.train(training)
    if not embeddings:
        raise DataError(f"{data}: the {split} split has no utterances")
    return torch.cat(embeddings), speakers


@torch.no_grad()
def evaluate_speaker_encoder(encoder: SpeakerEncoder, data: str | Path, *, split: str = "test",
                             max_items: int | None = None, batch_size: int = 16) -> dict:
    """Speaker-ID accuracy (over utterances of the training speakers; None without any) and the
    verification scores of :func:`verification_scores` on the whole utterances of ``split`` (None
    where the split holds no two utterances of one speaker, or only one speaker), plus ``utterances``
    and ``per_speaker``: {training speaker in the split: its accuracy}."""
    embeddings, speakers = speaker_embeddings(encoder, data, split=split, max_items=max_items, batch_size=batch_size)
    verification = dict.fromkeys(("same_cosine", "different_cosine", "eer", "same_pairs", "different_pairs"))
    if 1 < len(set(speakers)) < len(speakers):
        verification = verification_scores(embeddings, speakers)
    correct = {}  # speaker -> [right or wrong per utterance]
    for name, predicted in zip(speakers, encoder.cosines(embeddings).argmax(-1).tolist()):
        if name in encoder.speakers:
            correct.setdefault(name, []).append(encoder.speakers[predicted] == name)
    right = [hit for hits in correct.values() for hit in hits]
    per_speaker = {name: sum(correct[name]) / len(correct[name]) for name in encoder.speakers if name in correct}
    return {"accuracy": sum(right) / len(right) if right else None, **verification, "utterances": len(speakers),
            "per_speaker": per_speaker}
