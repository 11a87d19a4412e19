"""CTC training of the phoneme recognizer (:mod:`mmtok.asr`) as a LightningModule."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from mmtok.asr import BLANK, PhonemeRecognizer
from mmtok.metrics import edit_distance
from mmtok.training.checkpoint import record_model
from mmtok.training.optim import adamw_warmup_cosine


class PhonemeRecognizerModule(L.LightningModule):
    """CTC loss (Graves et al., 2006) over the corpus' space-separated ``phonemes``; PER on valid/test.

    AdamW with linear warm-up then cosine decay over the run's ``max_steps``.
    """

    def __init__(self, *, recognizer: PhonemeRecognizer, lr: float = 1e-3, weight_decay: float = 0.01,
                 warmup_steps: int = 500):
        super().__init__()
        self.save_hyperparameters(ignore=["recognizer"])
        self.recognizer = recognizer
        self._errors = {"val": [0, 0], "test": [0, 0]}  # [edit distance, reference phonemes]

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_warmup_cosine(self.recognizer.parameters(), trainer=self.trainer, lr=hp.lr,
                                   weight_decay=hp.weight_decay, warmup_steps=hp.warmup_steps)

    def _ctc_loss(self, batch: dict):
        if "phonemes" not in batch:
            raise ValueError("the recognizer trains on a manifest with a 'phonemes' field per utterance")
        log_probs, frame_lengths = self.recognizer(batch["audio"], batch["lengths"])
        targets = [self.recognizer.encode_phonemes(p).to(log_probs.device) for p in batch["phonemes"]]
        target_lengths = torch.tensor([len(t) for t in targets], device=log_probs.device)
        loss = F.ctc_loss(log_probs.transpose(0, 1), torch.cat(targets), frame_lengths, target_lengths,
                          blank=BLANK, zero_infinity=True)
        return loss, log_probs, frame_lengths

    def training_step(self, batch: dict | None, batch_idx: int):
        if batch is None:  # every file of the batch was skipped as unreadable
            return None
        loss, _, _ = self._ctc_loss(batch)
        self.log("train/ctc_loss", loss, prog_bar=True, batch_size=batch["audio"].shape[0])
        return loss

    def _evaluate(self, batch: dict | None, stage: str) -> None:
        if batch is None:
            return
        loss, log_probs, frame_lengths = self._ctc_loss(batch)
        self.log(f"{stage}/ctc_loss", loss, batch_size=batch["audio"].shape[0], sync_dist=True)
        for reference, hypothesis in zip(batch["phonemes"], self.recognizer.greedy_decode(log_probs, frame_lengths)):
            self._errors[stage][0] += edit_distance(reference.split(), hypothesis.split())
            self._errors[stage][1] += len(reference.split())

    def _log_error_rate(self, stage: str) -> None:
        errors = self.all_gather(torch.tensor(self._errors[stage], dtype=torch.float)).reshape(-1, 2).sum(0)
        if errors[1] > 0:
            self.log(f"{stage}/per", errors[0] / errors[1], prog_bar=True, rank_zero_only=True)
        self._errors[stage] = [0, 0]

    def validation_step(self, batch: dict | None, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict | None, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_error_rate("val")

    def on_test_epoch_end(self) -> None:
        self._log_error_rate("test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        record_model(checkpoint, self.recognizer, prefix="recognizer.", trainer=self.trainer)
