"""GAN training of an audio codec (EnCodec/DAC recipe) as a LightningModule with manual optimization.

Generator loss (EnCodec eq. 4 with DAC's weights): λ_mel · multi-scale mel L1 + λ_adv · hinge
adversarial + λ_feat · relative feature matching + λ_commit · commitment, plus λ_semantic · the
semantic reconstruction loss for codecs that have one (X-Codec). The discriminator
(multi-resolution STFT + multi-period) is trained with the hinge loss on real vs. reconstructed
audio. ``adversarial_start_step`` lets the codec learn from the mel loss alone first, which is
what makes a few CPU hours useful.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch import nn

from mmtok.codecs.base import Tokenizer
from mmtok.codecs.discriminators import default_discriminator
from mmtok.hub import WEIGHTS_NAME, resolve_file, load_weights_strict
from mmtok.losses import (MultiScaleMelLoss, feature_matching_loss, hinge_discriminator_loss,
                          hinge_generator_loss)
from mmtok.metrics import codec_metrics
from mmtok.training.checkpoint import record_model
from mmtok.training.media import log_audio_examples


class CodecModule(L.LightningModule):
    """Trains any codec whose ``forward(audio, lengths)`` returns a :class:`~mmtok.codecs.rvq.CodecOutput`.

    ``init_from`` (a Hub folder or repo id) starts from released weights, for fine-tuning; its config
    must build the same codec as ``codec`` (a mismatch names every differing tensor).
    """

    def __init__(
        self,
        *,
        codec: Tokenizer,
        init_from: str | None = None,
        discriminator: nn.Module | None = None,
        mel_loss: MultiScaleMelLoss | None = None,
        lambda_mel: float = 15.0,
        lambda_adv: float = 1.0,
        lambda_feat: float = 2.0,
        lambda_commit: float = 1.0,
        lambda_semantic: float = 1.0,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.8, 0.99),
        lr_decay: float = 0.99999,
        grad_clip: float = 1000.0,
        adversarial_start_step: int = 0,
        eval_quantizers: Sequence[int] = (1, 2, 4, 8),
        num_logged_examples: int = 2,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.save_hyperparameters(ignore=["codec", "discriminator", "mel_loss"])
        if init_from is not None:
            load_weights_strict(codec, resolve_file(init_from, WEIGHTS_NAME))
        self.codec = codec
        self.discriminator = discriminator if discriminator is not None else default_discriminator()
        self.mel_loss = mel_loss if mel_loss is not None else MultiScaleMelLoss(sample_rate=codec.sample_rate)
        bad = [n for n in eval_quantizers if not 1 <= n <= codec.num_codebooks]
        if bad:
            raise ValueError(f"eval_quantizers {bad} outside 1..{codec.num_codebooks} (the codec's codebooks)")
        self.eval_quantizers = list(eval_quantizers)
        # Generator steps taken, kept in checkpoints so that resuming keeps the adversarial schedule.
        self.register_buffer("generator_steps", torch.zeros((), dtype=torch.long))

    # -- set-up --------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if hasattr(self.codec, "enable_distributed_sync"):
            self.codec.enable_distributed_sync()

    def configure_optimizers(self):
        hp = self.hparams
        opt_g = torch.optim.AdamW(self.codec.parameters(), lr=hp.lr, betas=tuple(hp.betas))
        opt_d = torch.optim.AdamW(self.discriminator.parameters(), lr=hp.lr, betas=tuple(hp.betas))
        sched_g = torch.optim.lr_scheduler.ExponentialLR(opt_g, gamma=hp.lr_decay)
        sched_d = torch.optim.lr_scheduler.ExponentialLR(opt_d, gamma=hp.lr_decay)
        return [opt_g, opt_d], [sched_g, sched_d]

    # -- training ------------------------------------------------------------------------------
    def _optimizer_step(self, optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")
        optimizer.step()

    def _discriminator_step(self, audio: torch.Tensor, reconstruction: torch.Tensor, optimizer) -> torch.Tensor:
        self.toggle_optimizer(optimizer)  # the codec's parameters take no gradient here
        real_logits, _ = self.discriminator(audio)
        fake_logits, _ = self.discriminator(reconstruction.detach())
        loss = hinge_discriminator_loss(real_logits, fake_logits)
        self._optimizer_step(optimizer, loss)
        self.untoggle_optimizer(optimizer)
        return loss.detach()

    def _generator_loss(self, audio: torch.Tensor, out, adversarial: bool) -> tuple[torch.Tensor, dict]:
        hp = self.hparams
        mel = self.mel_loss(out.audio, audio)
        loss = hp.lambda_mel * mel + hp.lambda_commit * out.commitment_loss
        logs = {"train/mel_loss": mel.detach(), "train/commitment": out.commitment_loss.detach()}
        if out.semantic_loss is not None:  # X-Codec's semantic reconstruction (Ye et al. 2024)
            loss = loss + hp.lambda_semantic * out.semantic_loss
            logs["train/semantic_loss"] = out.semantic_loss.detach()
        if adversarial:
            with torch.no_grad():
                _, real_features = self.discriminator(audio)
            fake_logits, fake_features = self.discriminator(out.audio)
            adv = hinge_generator_loss(fake_logits)
            feat = feature_matching_loss(real_features, fake_features)
            loss = loss + hp.lambda_adv * adv + hp.lambda_feat * feat
            logs.update({"train/adv_loss": adv.detach(), "train/feature_matching": feat.detach()})
        logs["train/g_loss"] = loss.detach()
        return loss, logs

    def training_step(self, batch: dict | None, batch_idx: int) -> None:
        if batch is None:  # every file of the batch was skipped as unreadable
            return
        opt_g, opt_d = self.optimizers()
        audio, lengths = batch["audio"], batch["lengths"]
        out = self.codec(audio, lengths)
        real = audio if out.target is None else out.target
        adversarial = int(self.generator_steps) >= self.hparams.adversarial_start_step
        logs = {"train/d_loss": self._discriminator_step(real, out.audio, opt_d)} if adversarial else {}

        self.toggle_optimizer(opt_g)  # the discriminator's parameters take no gradient here
        g_loss, g_logs = self._generator_loss(real, out, adversarial)
        self._optimizer_step(opt_g, g_loss)
        self.untoggle_optimizer(opt_g)
        self.generator_steps += 1
        sched_g, sched_d = self.lr_schedulers()
        sched_g.step()
        if adversarial:
            sched_d.step()

        size = audio.shape[0]
        logs["train/lr"] = opt_g.param_groups[0]["lr"]
        self.log_dict({**logs, **g_logs}, batch_size=size)
        self.log("mel", g_logs["train/mel_loss"], prog_bar=True, batch_size=size, logger=False)
        skipped = getattr(self.trainer.datamodule, "num_skipped", 0) if self.trainer.datamodule else 0
        if skipped:
            self.log("data/skipped_files", float(skipped), batch_size=size)

    # -- evaluation ----------------------------------------------------------------------------
    def _evaluate(self, batch: dict | None, batch_idx: int, stage: str) -> None:
        if batch is None:
            return
        audio, lengths = batch["audio"], batch["lengths"]
        tokens = self.codec.encode(audio, lengths)
        size = audio.shape[0]
        for n in self.eval_quantizers:
            reconstruction = self.codec.decode(tokens, num_quantizers=n)
            metrics = codec_metrics(audio, reconstruction, sample_rate=self.codec.sample_rate, lengths=lengths)
            self.log_dict({f"{stage}/{k}@{n}q": v for k, v in metrics.items()}, batch_size=size, sync_dist=True)
            if n == self.codec.num_codebooks:
                self.log(f"{stage}/mel_distance", metrics["mel_distance"], batch_size=size, sync_dist=True,
                         prog_bar=True)
            if batch_idx == 0 and stage == "val" and self.trainer.is_global_zero:
                log_audio_examples(self, audio, reconstruction, lengths, suffix=f"{n}q",
                                   count=self.hparams.num_logged_examples, with_original=n == self.eval_quantizers[0])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    # -- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        record_model(checkpoint, self.codec, prefix="codec.", trainer=self.trainer)
