"""A duration predictor: phonemes + speaker -> frames per phoneme (FastSpeech 2's, Ren et al. 2021).

FastSpeech 2 (sec. 2.3, "variance predictor") predicts each phoneme's duration from the phoneme
sequence with two 1-D convolutions (ReLU, layer norm, dropout) and a linear layer, trained by mean
squared error on the logarithm of the durations that forced alignment gave. Here the input is the
predictor's own phoneme embeddings plus an embedding of the speaker (voices speak at different
rates), and the target is log(1 + frames). The speaker is dropped for ``speaker_dropout`` of the
training items (its null id 0), so an utterance in an unlabelled voice (a voice prompt) still gets
the corpus' average pace.

Shapes: ``ids: LongTensor [B, P]`` (0 pads), ``speakers: LongTensor [B]`` (0: none),
``durations: [B, P]`` frames -> log-durations ``[B, P]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class DurationPredictor(nn.Module):
    """Conv stack over phoneme + speaker embeddings -> log(1 + frames) per phoneme."""

    def __init__(self, *, num_phonemes: int, num_speakers: int = 0, dim: int = 128, num_layers: int = 2,
                 kernel_size: int = 3, dropout: float = 0.1):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"the duration predictor's kernel_size must be odd (same length out), got {kernel_size}")
        self.phonemes = nn.Embedding(num_phonemes + 1, dim, padding_idx=0)
        self.speakers = nn.Embedding(num_speakers + 1, dim)  # id 0: no speaker
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2)
                                   for _ in range(num_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(dim, 1)

    def forward(self, ids: torch.Tensor, speakers: torch.Tensor) -> torch.Tensor:
        """ids [B, P], speakers [B] -> predicted log(1 + frames) [B, P] (anything on padding)."""
        valid = (ids != 0)[..., None]
        x = (self.phonemes(ids) + self.speakers(speakers)[:, None]) * valid  # [B, P, D]
        for conv, norm in zip(self.convs, self.norms):
            x = rearrange(conv(rearrange(x, "b p d -> b d p")), "b d p -> b p d")
            x = self.dropout(norm(F.relu(x))) * valid  # padding stays zero for the next convolution
        return self.out(x)[..., 0]

    def loss(self, ids: torch.Tensor, speakers: torch.Tensor, durations: torch.Tensor) -> torch.Tensor:
        """Mean squared error of log(1 + frames) over the real phonemes (``ids != 0``)."""
        valid = ids != 0
        return F.mse_loss(self(ids, speakers)[valid], torch.log1p(durations.float())[valid])

    def frames(self, ids: torch.Tensor, speakers: torch.Tensor) -> torch.Tensor:
        """Predicted frames per phoneme [B, P] (≥ 0, real-valued; 0 on padding)."""
        return torch.expm1(self(ids, speakers)).clamp(min=0) * (ids != 0)


def round_durations(frames: torch.Tensor | Sequence[float], *, pace: float = 1.0) -> list[int]:
    """Real-valued frames per phoneme ``[P]`` × ``pace`` -> whole frames, at least one each, rounded
    on the running sum (so the total is round(pace · sum) unless a phoneme had to be given its one
    frame, and no phoneme is more than a frame off)."""
    ends = torch.round(torch.cumsum(torch.as_tensor(frames, dtype=torch.float64).clamp(min=0) * pace, 0)).long()
    out, previous = [], 0
    for end in ends.tolist():
        end = max(end, previous + 1)
        out.append(end - previous)
        previous = end
    return out
