"""Training the speaker encoder (:mod:`mmtok.judges.speakers`) as a LightningModule.

The loss is the additive angular margin softmax (Deng et al. 2019, "ArcFace", eq. 3; used for speaker
embeddings by Xiang et al. 2019 and ECAPA-TDNN): with theta_y the angle between an utterance's
embedding and its speaker's centre, ``L = -log(e^{s cos(theta_y + m)} / (e^{s cos(theta_y + m)} +
sum_{j != y} e^{s cos theta_j}))``; ``margin = 0`` is a plain (normalised) softmax cross-entropy.
The margin grows linearly from 0 over ``margin_warmup_steps``.
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F

from mmtok.errors import DataError
from mmtok.judges.speakers import SpeakerEncoder, verification_scores
from mmtok.training.checkpoint import record_model
from mmtok.training.optim import adamw_warmup_cosine


def angular_margin_logits(cosines: torch.Tensor, labels: torch.Tensor, *, margin: float, scale: float) -> torch.Tensor:
    """``scale · cos(theta + margin)`` for each item's own speaker, ``scale · cos(theta)`` for the others.
    cosines [B, S] in [-1, 1], labels [B] -> logits [B, S]. Where theta + margin would pass pi the target
    logit is ``cos(theta) - margin · sin(margin)`` instead (ArcFace's fallback, monotonic in theta)."""
    if margin == 0:
        return scale * cosines
    target = cosines.gather(1, labels[:, None]).clamp(-1 + 1e-7, 1 - 1e-7)  # [B, 1]
    shifted = target * math.cos(margin) - (1 - target.square()).sqrt() * math.sin(margin)
    shifted = torch.where(target > math.cos(math.pi - margin), shifted, target - margin * math.sin(margin))
    return scale * cosines.scatter(1, labels[:, None], shifted)


def random_crops(audio: torch.Tensor, lengths: torch.Tensor, *, min_samples: int, max_samples: int,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One crop length drawn in [min_samples, max_samples] for the batch, then for each item a random
    window of that length inside its valid samples (the whole item when it is shorter).
    audio [B, 1, N], lengths [B] -> (audio [B, 1, L'], lengths [B]) with L' = min(length, max valid)."""
    size = int(torch.randint(min_samples, max_samples + 1, (1,), generator=generator))
    new_lengths = lengths.clamp(max=size)
    out = audio.new_zeros(audio.shape[0], audio.shape[1], int(new_lengths.max()))
    for row, (length, crop) in enumerate(zip(lengths.tolist(), new_lengths.tolist())):
        start = int(torch.randint(0, length - crop + 1, (1,), generator=generator))
        out[row, :, :crop] = audio[row, :, start:start + crop]
    return out, new_lengths


class SpeakerEncoderModule(L.LightningModule):
    """Angular margin softmax over the batches' ``speaker`` names, on random crops of
    ``min_crop_seconds``..``max_crop_seconds`` in training (a crop length per batch). Validation and
    test read whole utterances: the loss and speaker-ID accuracy per batch, and at the end of the epoch
    the mean cosine of same- and different-speaker pairs of utterances, their gap and the equal error
    rate (:func:`mmtok.judges.speakers.verification_scores`). AdamW with linear warm-up then cosine decay
    over the run's ``max_steps``."""

    def __init__(self, *, encoder: SpeakerEncoder, lr: float = 2e-3, weight_decay: float = 0.01,
                 warmup_steps: int = 100, margin: float = 0.2, scale: float = 30.0, margin_warmup_steps: int = 200,
                 min_crop_seconds: float = 2.0, max_crop_seconds: float = 3.0):
        super().__init__()
        if not 0 < min_crop_seconds <= max_crop_seconds:
            raise ValueError(f"SpeakerEncoderModule: need 0 < min_crop_seconds <= max_crop_seconds, got "
                             f"{min_crop_seconds}, {max_crop_seconds}")
        if margin < 0 or scale <= 0:
            raise ValueError(f"SpeakerEncoderModule: need margin >= 0 and scale > 0, got {margin}, {scale}")
        self.save_hyperparameters(ignore=["encoder"])
        self.encoder = encoder
        self._pairs = {"val": ([], []), "test": ([], [])}  # (embeddings, speaker ids) of the epoch

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_warmup_cosine(self.encoder.parameters(), trainer=self.trainer, lr=hp.lr,
                                   weight_decay=hp.weight_decay, warmup_steps=hp.warmup_steps)

    def current_margin(self) -> float:
        hp = self.hparams
        if hp.margin_warmup_steps <= 0:
            return hp.margin
        return hp.margin * min(1.0, self.global_step / hp.margin_warmup_steps)

    def _step(self, batch: dict | None, stage: str):
        if batch is None:  # every file of the batch was skipped as unreadable
            return None
        if "speaker" not in batch:
            raise DataError("the speaker encoder trains on a manifest with a 'speaker' per utterance")
        audio, lengths = batch["audio"], batch["lengths"]
        labels = self.encoder.speaker_ids(batch["speaker"]).to(audio.device)
        if stage == "train":
            rate = self.encoder.sample_rate
            audio, lengths = random_crops(audio, lengths, min_samples=round(self.hparams.min_crop_seconds * rate),
                                          max_samples=round(self.hparams.max_crop_seconds * rate))
        embeddings = F.normalize(self.encoder.embedding(audio, lengths), dim=-1)  # [B, D]
        cosines = self.encoder.cosines(embeddings)  # [B, S]
        margin = self.current_margin() if stage == "train" else self.hparams.margin
        loss = F.cross_entropy(angular_margin_logits(cosines, labels, margin=margin, scale=self.hparams.scale), labels)
        size = audio.shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=stage == "train", batch_size=size, sync_dist=stage != "train")
        self.log(f"{stage}/accuracy", (cosines.argmax(-1) == labels).float().mean(), prog_bar=stage != "train",
                 batch_size=size, sync_dist=stage != "train")
        if stage != "train":
            self._pairs[stage][0].append(embeddings.detach())
            self._pairs[stage][1].append(labels)
        return loss

    def _log_verification(self, stage: str) -> None:
        embeddings, labels = self._pairs[stage]
        self._pairs[stage] = ([], [])
        if not embeddings:
            return
        # every rank holds the same number of utterances (the distributed sampler pads), so they gather
        embeddings = self.all_gather(torch.cat(embeddings)).reshape(-1, self.encoder.embedding_dim)
        labels = self.all_gather(torch.cat(labels)).reshape(-1)
        if len(labels.unique()) < 2 or len(labels.unique()) == len(labels):
            return  # no different-speaker or no same-speaker pair: nothing to measure
        scores = verification_scores(embeddings.cpu(), [str(i) for i in labels.tolist()])
        self.log(f"{stage}/same_cosine", scores["same_cosine"], rank_zero_only=True)
        self.log(f"{stage}/different_cosine", scores["different_cosine"], rank_zero_only=True)
        self.log(f"{stage}/cosine_gap", scores["same_cosine"] - scores["different_cosine"], rank_zero_only=True)
        self.log(f"{stage}/eer", scores["eer"], prog_bar=True, rank_zero_only=True)

    def training_step(self, batch: dict | None, batch_idx: int):
        return self._step(batch, "train")

    def validation_step(self, batch: dict | None, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict | None, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_verification("val")

    def on_test_epoch_end(self) -> None:
        self._log_verification("test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        record_model(checkpoint, self.encoder, prefix="encoder.", trainer=self.trainer)
