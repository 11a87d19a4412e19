"""Training the digit classifier (:mod:`mmtok.judges.digits`) as a LightningModule."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from mmtok.judges.digits import DigitClassifier
from mmtok.training.checkpoint import record_model
from mmtok.training.optim import adamw_warmup_cosine


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image moved by its own random integer (dy, dx) in [-max_shift, max_shift], zero-filled
    (the digits are white on black). images: [B, C, H, W] -> [B, C, H, W]."""
    if max_shift <= 0:
        return images
    height, width = images.shape[-2:]
    padded = F.pad(images, (max_shift,) * 4)  # [B, C, H + 2s, W + 2s]
    offsets = torch.randint(0, 2 * max_shift + 1, (images.shape[0], 2), generator=generator).tolist()
    return torch.stack([item[:, dy:dy + height, dx:dx + width] for item, (dy, dx) in zip(padded, offsets)])


class ClassifierModule(L.LightningModule):
    """Cross-entropy over the batches' ``labels``, with random shifts of up to ``max_shift`` pixels
    in training; accuracy on valid/test. AdamW with linear warm-up then cosine decay over the run's
    ``max_steps``."""

    def __init__(self, *, classifier: DigitClassifier, lr: float = 2e-3, weight_decay: float = 0.01,
                 warmup_steps: int = 100, max_shift: int = 2, label_smoothing: float = 0.0):
        super().__init__()
        self.save_hyperparameters(ignore=["classifier"])
        self.classifier = classifier

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_warmup_cosine(self.classifier.parameters(), trainer=self.trainer, lr=hp.lr,
                                   weight_decay=hp.weight_decay, warmup_steps=hp.warmup_steps)

    def _step(self, batch: dict | None, stage: str):
        if batch is None:  # every file of the batch was skipped as unreadable
            return None
        if "labels" not in batch or not isinstance(batch["labels"], torch.Tensor):
            raise ValueError("the classifier trains on a manifest with an integer 'label' per image")
        images, labels = batch["image"], batch["labels"]
        if stage == "train":
            images = random_shift(images, self.hparams.max_shift)
        logits = self.classifier(images)  # [B, num_classes]
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing if stage == "train" else 0)
        size = images.shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=stage == "train", batch_size=size, sync_dist=stage != "train")
        self.log(f"{stage}/accuracy", (logits.argmax(-1) == labels).float().mean(), prog_bar=stage != "train",
                 batch_size=size, sync_dist=stage != "train")
        return loss

    def training_step(self, batch: dict | None, batch_idx: int):
        return self._step(batch, "train")

    def validation_step(self, batch: dict | None, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict | None, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        record_model(checkpoint, self.classifier, prefix="classifier.", trainer=self.trainer)
