"""Training of a VQGAN-style image or video tokenizer (Esser et al. 2021) as a LightningModule with manual
optimization.

Images and video share it: a batch carries the tokenizer's media under the key of its ``modality``
(``"image"`` [B, C, H, W], or ``"video"`` [B, C, F, H, W] with ``lengths``); every loss and metric
reads frames as images, each clip's own frames only (those its tokenizer reconstructs: a video
tokenizer's ``usable_frames(lengths)``, e.g. C-ViViT's 1 + k · pt).

Generator loss: ``λ_1 |x − x̂|₁ + λ_2 ‖x − x̂‖² + λ_p · perceptual(x̂, x) + λ_commit · quantizer loss
+ λ_adv · w · hinge_G(D(x̂))``; ``w`` is VQGAN's adaptive weight (eq. 7), the ratio of the gradient
norms of the reconstruction and adversarial terms at the decoder's last layer, or 1 with
``adaptive_adv_weight: false``. The perceptual distance (:class:`~mmtok.codecs.vq_image.PerceptualLoss`)
reads the feature maps of the frozen network in the Hub folder ``perceptual_network`` (the digit
classifier trained by mmtok). The optional discriminator (a PatchGAN, injected by ``class_path``)
is trained with the hinge loss from ``adversarial_start_step`` generator steps on, after the
tokenizer has learnt from the reconstruction losses alone.

``decoder_only`` fine-tunes the decoder alone (as Stable Diffusion's ft-MSE VAE decoder was): the encoder and
codebooks are frozen, each step's codes come from ``encode``, so every code, and every generator already
trained on them, stays valid while the reconstructions improve. It needs ``init_from`` (a tokenizer's Hub
folder) and a tokenizer with ``decoder_modules`` and ``decode_codes``.

Validation logs L1, MSE and PSNR of the reconstructions from the first n codebooks for each n in
``eval_quantizers``, the codebook usage and perplexity of each level, and writes a png grid of
originals over reconstructions to ``<default_root_dir>/media/step_<N>/`` (and to wandb).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmtok.codecs.base import Tokenizer
from mmtok.codecs.vq_image import PerceptualLoss
from mmtok.hub import WEIGHTS_NAME, load_weights_strict, resolve_file
from mmtok.losses import hinge_discriminator_loss, hinge_generator_loss
from mmtok.metrics.image import codebook_usage, psnr
from mmtok.training.checkpoint import record_model
from mmtok.training.media import log_image_examples


class ImageTokenizerModule(L.LightningModule):
    """Trains an image tokenizer whose ``forward(images)`` returns an
    :class:`~mmtok.codecs.vq_image.ImageTokenizerOutput` (and that has a ``last_layer`` for the adaptive
    GAN weight). ``init_from`` (a Hub folder or repo id) starts from released weights.

    ``perceptual_frames`` caps the images (or video frames) of a step that go through the perceptual
    network: a random subset, an unbiased estimate of the full batch's distance at a fraction of its cost.

    Learning rate: linear warm-up over ``warmup_steps`` generator steps, then constant, or with
    ``lr_decay_steps`` a cosine decay to ``min_lr_ratio · lr`` at that many steps.
    """

    def __init__(
        self,
        *,
        tokenizer: Tokenizer,
        init_from: str | None = None,
        discriminator: nn.Module | None = None,
        perceptual_network: str | None = None,
        lambda_l1: float = 1.0,
        lambda_l2: float = 0.0,
        lambda_perceptual: float = 1.0,
        perceptual_frames: int | None = None,
        lambda_commit: float = 1.0,
        lambda_adv: float = 0.1,
        adaptive_adv_weight: bool = True,
        adversarial_start_step: int = 0,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.9),
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_decay_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        grad_clip: float = 1.0,
        eval_quantizers: Sequence[int] | None = None,
        num_logged_examples: int = 8,
        decoder_only: bool = False,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.save_hyperparameters(ignore=["tokenizer", "discriminator"])
        if init_from is not None:
            load_weights_strict(tokenizer, resolve_file(init_from, WEIGHTS_NAME))
        if decoder_only:
            if init_from is None:
                raise ValueError("decoder_only: give init_from, the tokenizer whose codes are kept")
            tokenizer.requires_grad_(False)
            for module in tokenizer.decoder_modules():
                module.requires_grad_(True)
        self.tokenizer = tokenizer
        self.discriminator = discriminator
        self.perceptual = PerceptualLoss.from_pretrained(perceptual_network) if perceptual_network else None
        quantizers = list(eval_quantizers) if eval_quantizers else [tokenizer.num_codebooks]
        bad = [n for n in quantizers if not 1 <= n <= tokenizer.num_codebooks]
        if bad:
            raise ValueError(f"eval_quantizers {bad} outside 1..{tokenizer.num_codebooks} (the tokenizer's codebooks)")
        self.eval_quantizers = quantizers
        self._val_codes: list[torch.Tensor] = []  # [1, Q, N_i] per validation item, for codebook usage
        self._examples: list[torch.Tensor] = []  # [k, 1 + len(eval_quantizers), C, H, W] per validation batch
        # Generator steps taken, kept in checkpoints so that resuming keeps the adversarial and lr schedules.
        self.register_buffer("generator_steps", torch.zeros((), dtype=torch.long))

    # -- set-up --------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if hasattr(self.tokenizer, "enable_distributed_sync"):
            self.tokenizer.enable_distributed_sync()

    def _lr_factor(self, step: int) -> float:
        hp = self.hparams
        if step < hp.warmup_steps:
            return (step + 1) / hp.warmup_steps
        if hp.lr_decay_steps is None:
            return 1.0
        progress = min(1.0, (step - hp.warmup_steps) / max(1, hp.lr_decay_steps - hp.warmup_steps))
        return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def configure_optimizers(self):
        hp = self.hparams

        def adam(parameters):
            optimizer = torch.optim.AdamW(parameters, lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
            # the step is read from the generator_steps buffer, so a resumed run continues the schedule
            return optimizer, torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda _: self._lr_factor(int(self.generator_steps)))

        opt_g, sched_g = adam([p for p in self.tokenizer.parameters() if p.requires_grad])
        if self.discriminator is None:
            return [opt_g], [sched_g]
        opt_d, sched_d = adam(self.discriminator.parameters())
        return [opt_g, opt_d], [sched_g, sched_d]

    # -- training ------------------------------------------------------------------------------
    def _optimizer_step(self, optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")
        optimizer.step()

    def _discriminator_step(self, images: torch.Tensor, reconstruction: torch.Tensor, optimizer) -> torch.Tensor:
        self.toggle_optimizer(optimizer)  # the tokenizer's parameters take no gradient here
        loss = hinge_discriminator_loss([self.discriminator(images)], [self.discriminator(reconstruction.detach())])
        self._optimizer_step(optimizer, loss)
        self.untoggle_optimizer(optimizer)
        return loss.detach()

    def _reconstruction_loss(self, images: torch.Tensor, reconstruction: torch.Tensor) -> tuple[torch.Tensor, dict]:
        hp = self.hparams
        l1, mse = F.l1_loss(reconstruction, images), F.mse_loss(reconstruction, images)
        loss = hp.lambda_l1 * l1 + hp.lambda_l2 * mse
        logs = {"l1": l1.detach(), "mse": mse.detach()}
        if self.perceptual is not None and hp.lambda_perceptual > 0:
            if hp.perceptual_frames is not None and len(images) > hp.perceptual_frames:
                pick = torch.randperm(len(images), device=images.device)[: hp.perceptual_frames]
                images, reconstruction = images[pick], reconstruction[pick]
            perceptual = self.perceptual(reconstruction, images)
            loss = loss + hp.lambda_perceptual * perceptual
            logs["perceptual"] = perceptual.detach()
        return loss, logs

    def _adversarial_weight(self, reconstruction_loss: torch.Tensor, adversarial_loss: torch.Tensor) -> torch.Tensor:
        """VQGAN eq. 7: ‖∇_L rec‖ / (‖∇_L adv‖ + 1e-4) at the decoder's last layer L, clamped to [0, 1e4]."""
        if not self.hparams.adaptive_adv_weight:
            return adversarial_loss.new_ones(())
        last = self.tokenizer.last_layer
        rec_grad = torch.autograd.grad(reconstruction_loss, last, retain_graph=True)[0]
        adv_grad = torch.autograd.grad(adversarial_loss, last, retain_graph=True)[0]
        return (rec_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()

    def training_step(self, batch: dict | None, batch_idx: int) -> None:
        if batch is None:  # every file of the batch was skipped as unreadable
            return
        optimizers, schedulers = self.optimizers(), self.lr_schedulers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        schedulers = schedulers if isinstance(schedulers, list) else [schedulers]
        media, lengths = self._media(batch)
        decoded, quantizer_loss = self._reconstruct(media, lengths)
        images, reconstructed = as_frames(media, lengths), as_frames(decoded, lengths)  # [N, C, H, W]
        adversarial = (self.discriminator is not None
                       and int(self.generator_steps) >= self.hparams.adversarial_start_step)
        logs = {"d_loss": self._discriminator_step(images, reconstructed, optimizers[1])} if adversarial else {}

        self.toggle_optimizer(optimizers[0])  # the discriminator's parameters take no gradient here
        reconstruction, rec_logs = self._reconstruction_loss(images, reconstructed)
        loss = reconstruction + self.hparams.lambda_commit * quantizer_loss
        logs.update(rec_logs, quantizer_loss=quantizer_loss.detach())
        if adversarial:
            adv = hinge_generator_loss([self.discriminator(reconstructed)])
            weight = self._adversarial_weight(reconstruction, adv)
            loss = loss + self.hparams.lambda_adv * weight * adv
            logs.update(adv_loss=adv.detach(), adv_weight=weight)
        logs["g_loss"] = loss.detach()
        self._optimizer_step(optimizers[0], loss)
        self.untoggle_optimizer(optimizers[0])
        self.generator_steps += 1
        for scheduler in schedulers[: 2 if adversarial else 1]:
            scheduler.step()

        size = media.shape[0]
        logs["lr"] = optimizers[0].param_groups[0]["lr"]
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=size)
        self.log("l1", logs["l1"], prog_bar=True, batch_size=size, logger=False)
        skipped = getattr(self.trainer.datamodule, "num_skipped", 0) if self.trainer.datamodule else 0
        if skipped:
            self.log("data/skipped_files", float(skipped), batch_size=size)

    def _reconstruct(self, media: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(the media decoded for training, the quantizer loss): encode-quantize-decode, or with
        ``decoder_only`` the frozen encoder's codes decoded (no quantizer loss: the codebooks are fixed)."""
        if self.hparams.decoder_only:
            codes = (self.tokenizer.encode(media) if lengths is None else self.tokenizer.encode(media, lengths)).codes
            return self.tokenizer.decode_codes(codes), media.new_zeros(())
        out = self.tokenizer(media) if lengths is None else self.tokenizer(media, lengths)
        return out.images, out.quantizer_loss

    def _media(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's media under the tokenizer's modality, and for video each clip's usable frames
        (the clips cut to the longest of them)."""
        media = batch[self.tokenizer.modality]
        if "lengths" not in batch:
            return media, None
        lengths = self.tokenizer.usable_frames(batch["lengths"])
        return media[:, :, : int(lengths.max())], lengths

    # -- evaluation ----------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_codes, self._examples = [], []

    def _evaluate(self, batch: dict | None, batch_idx: int, stage: str) -> None:
        if batch is None:
            return
        media, lengths = self._media(batch)
        tokens = self.tokenizer.encode(media, lengths)  # codes [B, Q, N]
        size, full = media.shape[0], self.tokenizer.num_codebooks
        if stage == "val":
            self._val_codes.extend(item.codes for item in tokens)  # each [1, Q, N_i]: its own steps only
        images = as_frames(media, lengths)
        reconstructions = []
        for n in self.eval_quantizers:
            decoded = self.tokenizer.decode(tokens, num_quantizers=n)  # [B, C, (F,) H, W] in [0, 1]
            reconstructions.append(decoded)
            reconstruction = as_frames(decoded, lengths)
            metrics = {"l1": F.l1_loss(reconstruction, images), "mse": F.mse_loss(reconstruction, images),
                       "psnr": psnr(images, reconstruction).mean()}
            if self.perceptual is not None:
                metrics["perceptual"] = self.perceptual(reconstruction, images)
            self.log_dict({f"{stage}/{k}@{n}q": v for k, v in metrics.items()}, batch_size=size, sync_dist=True)
            if n == full:
                self.log_dict({f"{stage}/{k}": v for k, v in metrics.items() if k in ("l1", "psnr")},
                              batch_size=size, sync_dist=True, prog_bar=True)
        if stage == "val":
            self._keep_examples(example_images(media, lengths), [example_images(r, lengths) for r in reconstructions])

    def _keep_examples(self, images: torch.Tensor, reconstructions: list[torch.Tensor]) -> None:
        """Evenly spaced items of every validation batch, ``num_logged_examples`` in all, so that the grid
        spans the validation set (a corpus sorted by class shows every class, not the first one)."""
        batches = self.trainer.num_val_batches[0] if self.trainer.num_val_batches else 1
        batches = int(batches) if math.isfinite(batches) and batches >= 1 else 1  # inf for an iterable loader
        per_batch = math.ceil(self.hparams.num_logged_examples / batches)
        index = torch.linspace(0, images.shape[0] - 1, min(per_batch, images.shape[0])).round().long()
        self._examples.append(torch.stack([images[index], *(r[index] for r in reconstructions)], 1).cpu())

    def on_validation_epoch_end(self) -> None:
        if self._examples and self.trainer.is_global_zero:
            examples = torch.cat(self._examples)[: self.hparams.num_logged_examples]  # [k, 1 + n, C, H, W]
            log_image_examples(self, examples[:, 0], list(examples[:, 1:].unbind(1)),
                               names=[f"{n}q" for n in self.eval_quantizers], count=len(examples))
        if not self._val_codes:
            return
        codes = torch.cat([c.flatten(2) for c in self._val_codes], -1)[0]  # [Q, steps of the split]
        if self.trainer.world_size > 1:  # ranks may hold different step counts (clips): pad with -1, ignored
            longest = int(self.all_gather(torch.tensor(codes.shape[1], device=codes.device)).max())
            codes = F.pad(codes, (0, longest - codes.shape[1]), value=-1)
            codes = self.all_gather(codes).transpose(0, 1).flatten(1)
        for q, size in enumerate(self.tokenizer.codebook_sizes):
            usage = codebook_usage(codes[q], size)
            self.log_dict({f"val/usage@q{q}": usage["usage"], f"val/perplexity@q{q}": usage["perplexity"]})
        self._val_codes, self._examples = [], []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    # -- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        record_model(checkpoint, self.tokenizer, prefix="tokenizer.", trainer=self.trainer)


EXAMPLE_FRAMES = 9  # frames of a clip shown in a row of the example grid


def as_frames(media: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Images [B, C, H, W] as they are; video [B, C, F, H, W] -> each clip's first ``lengths`` frames,
    stacked [Σ lengths, C, H, W] (what per-frame losses and metrics read)."""
    if lengths is None:
        return media
    valid = torch.arange(media.shape[2], device=media.device)[None, :] < lengths.to(media.device)[:, None]
    return media.transpose(1, 2)[valid]


def example_images(media: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """What an example grid shows of each item: images as they are, a clip as a strip of its first
    :data:`EXAMPLE_FRAMES` frames side by side [B, C, H, k · W] (black past its end)."""
    if lengths is None:
        return media
    frames = media[:, :, :EXAMPLE_FRAMES]
    keep = torch.arange(frames.shape[2], device=media.device)[None, :] < lengths.to(media.device)[:, None]
    frames = frames * keep[:, None, :, None, None]
    return rearrange(frames, "b c f h w -> b c h (f w)")
