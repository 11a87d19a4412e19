"""Training a generator (AR or masked diffusion) on a tokenizer's codes: the shared LightningModule."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import torch

from mmtok.hub import CONFIG_NAME, WEIGHTS_NAME, load_state_strict, read_weights, resolve_file
from mmtok.nn import deepen_state
from mmtok.tasks import build_task
from mmtok.tokens import Tokens
from mmtok.training.checkpoint import record_model
from mmtok.training.media import log_generated_audio
from mmtok.training.optim import warmup_cosine

log = logging.getLogger(__name__)


def log_generated_examples(module: L.LightningModule, modality: str, generated: list[torch.Tensor],
                           references: list[torch.Tensor], *, sample_rate: int | None) -> None:
    """The writer of a modality for generated items next to real ones (each [C, ...] as decoded):
    audio as wavs and spectrograms, images as one png grid (real row over generated row), video as
    the same grid of strips of each clip's first frames."""
    if modality == "audio":
        log_generated_audio(module, generated, references, sample_rate=sample_rate)
    elif modality in ("image", "video"):
        from mmtok.training.media import log_image_examples

        if modality == "video":
            references, generated = _clip_strips(references), _clip_strips(generated)
        log_image_examples(module, torch.stack(references), [torch.stack(generated)], names=["generated"],
                           count=len(generated), name="generated")
    else:
        raise ValueError(f"no example writer for {modality!r} media")


def _clip_strips(clips: list[torch.Tensor]) -> list[torch.Tensor]:
    """Clips [C, F_i, H, W] -> strips of their first frames (black past each one's end), one width."""
    from mmtok.training.image_tokenizer import example_images

    longest = max(clip.shape[1] for clip in clips)
    padded = torch.stack([torch.nn.functional.pad(clip, (0, 0, 0, 0, 0, longest - clip.shape[1])) for clip in clips])
    return list(example_images(padded, torch.tensor([clip.shape[1] for clip in clips])))


def take(batch: dict, count: int) -> dict:
    """The first ``count`` items of a batch dict (tensors, lists and nested dicts)."""
    def first(value):
        if isinstance(value, dict):
            return {k: first(v) for k, v in value.items()}
        return value[:count]

    return {key: first(value) for key, value in batch.items()}


class GeneratorModule(L.LightningModule):
    """Trains ``generator`` on its own ``loss(batch)``; subclasses name the generator type (for
    LightningCLI). A training batch that carries ``crops`` (short items, the ``crops_per_item`` of
    :class:`~mmtok.data.tokens.TokenDataModule`) also trains on ``loss(batch["crops"])``, each loss weighted
    by its share of the steps, so every step weighs alike, as if the crops were items of the batch
    (the number of crops per item sets their weight).
    Examples are generated at validation from the first items' conditions, with ``sampler`` (one of
    the generator's, default its first), ``temperature`` and ``top_k``.

    The tokenizer (the generator's ``tokenizer`` Hub folder) is loaded frozen: it is checked against
    the backbone's vocabulary at construction, and decodes the examples generated at validation. It
    is not part of the checkpoint. Training batches carry cached codes (:mod:`mmtok.data.tokens`).
    AdamW with linear warm-up and cosine decay over the run's ``max_steps``. ``init_from`` (a Hub
    folder or repo id) starts from released weights, for fine-tuning; its config must build the same
    generator (a mismatch names every differing tensor), and a fine-tune keeps its recorded sampling
    settings unless the recipe's generator sets its own. With ``grow_depth``, ``init_from`` may have
    fewer transformer blocks than the recipe's backbone: the deeper stack starts from them, computing
    the same function (:func:`~mmtok.nn.deepen_state`), a larger model that need not relearn what the
    smaller one knows. ``adapt_from`` (an AR generator's Hub folder) starts from its weights instead
    (:meth:`~mmtok.generators.TokenGenerator.adapt_from_autoregressive`: masked models from an AR one,
    or any generator from an AR one over fewer codebooks). When training starts, the generator
    records the tokens' facts (grid, frame rate) from the tokenizer, and its task measures what it
    needs on the token cache (:meth:`mmtok.tasks.Task.measure`).
    """

    def __init__(self, *, generator, init_from: str | None = None, grow_depth: bool = False,
                 adapt_from: str | None = None, lr: float = 5e-4, weight_decay: float = 0.05,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 300,
                 num_generated_examples: int = 2, temperature: float = 1.0, top_k: int | None = None,
                 sampler: str | None = None):
        super().__init__()
        self.sampler = generator.check_sampler(sampler)
        self.save_hyperparameters(ignore=["generator"])
        if adapt_from is not None and init_from is not None:
            raise ValueError("give init_from (a generator of this family to fine-tune) or adapt_from (an AR "
                             "generator to start from), not both")
        if adapt_from is not None:
            untouched = generator.adapt_from_autoregressive(adapt_from)
            if untouched:
                log.info("adapted from %s; kept the initialisation of %s", adapt_from, ", ".join(untouched))
        if grow_depth and init_from is None:
            raise ValueError("grow_depth: give init_from, the shallower generator to grow")
        if init_from is not None:
            state = read_weights(resolve_file(init_from, WEIGHTS_NAME))
            if grow_depth:
                state = deepen_state(state, prefix="backbone.transformer.blocks",
                                     num_layers=len(generator.backbone.transformer.blocks))
            load_state_strict(generator, state, source=f"init_from {init_from}: the recipe's generator does not "
                                                       f"fit its weights")
            recorded = json.loads(Path(resolve_file(init_from, CONFIG_NAME)).read_text()).get("sampling") or {}
            generator.record_sampling(**{**recorded, **generator.sampling})
        self.generator = generator
        tokenizer = generator.load_tokenizer().requires_grad_(False)
        generator.record_token_facts(tokenizer)
        self._tokenizer = [tokenizer]  # a list: not a submodule

    @property
    def tokenizer(self):
        return self._tokenizer[0]

    def setup(self, stage: str) -> None:
        corpus = getattr(self.trainer.datamodule, "corpus", None) if self.trainer.datamodule else None
        if corpus is None:
            return
        self.generator.check_tokenizer(corpus.info["codebook_sizes"], name=f"of the token cache {corpus.folder}")
        if stage == "fit" and self.generator.task is not None:  # e.g. a length model measured on the data
            task = build_task(self.generator.task)
            task.measure(corpus)
            self.generator.record_task(task.spec())

    def configure_optimizers(self):
        hp = self.hparams
        decay = [p for n, p in self.generator.named_parameters() if p.requires_grad and p.dim() >= 2]
        rest = [p for n, p in self.generator.named_parameters() if p.requires_grad and p.dim() < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                                       {"params": rest, "weight_decay": 0.0}], lr=hp.lr, betas=tuple(hp.betas))
        scheduler = warmup_cosine(optimizer, warmup_steps=hp.warmup_steps,
                                  total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        loss, logs = self.generator.loss(batch)
        size = batch["codes"].shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=size, sync_dist=stage != "train")
        self.log_dict({f"{stage}/{k}": v for k, v in logs.items()}, batch_size=size, sync_dist=stage != "train")
        if "crops" in batch:  # short items trained beside the batch's own (TokenDataModule's crops_per_item)
            crops = batch["crops"]
            crops_loss, _ = self.generator.loss(crops)
            self.log(f"{stage}/crops_loss", crops_loss, batch_size=crops["codes"].shape[0], sync_dist=stage != "train")
            share = crops["lengths"].sum() / (crops["lengths"].sum() + batch["lengths"].sum())
            loss = (1 - share) * loss + share * crops_loss
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")
        if batch_idx == 0 and self.trainer.is_global_zero and self.hparams.num_generated_examples:
            self._log_examples(take(batch, self.hparams.num_generated_examples))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")

    @torch.no_grad()
    def _log_examples(self, batch: dict) -> None:
        """Generate from the first items' conditions at their real lengths and write the results next to
        the real items, with the writer of the tokenizer's modality."""
        tokens = self.generate_examples(batch)
        tokenizer = self.tokenizer.to(self.device)
        real = self.generator.tokens(batch["codes"][:, : self.generator.num_codebooks], batch["lengths"])
        generated = [tokenizer.decode(tokens[i])[0] for i in range(tokens.batch_size)]
        references = [tokenizer.decode(real[i])[0] for i in range(tokens.batch_size)]
        self.log("val/generated_frames", tokens.lengths.float().mean(), batch_size=tokens.batch_size)
        log_generated_examples(self, tokenizer.modality, generated, references, sample_rate=tokenizer.sample_rate)

    def generate_examples(self, batch: dict) -> Tokens:
        """Tokens generated from the conditions of a batch of real examples, at their lengths (the
        most, for a generator that stops by itself and is given no frame-placed conditions: twice
        them), with the module's sampler options."""
        free = self.generator.stops_by_itself and not self.generator.frame_aligned
        lengths = batch["lengths"] * (2 if free else 1)
        return self.generator.generate(batch, lengths=lengths, sampler=self.sampler,
                                       temperature=self.hparams.temperature, top_k=self.hparams.top_k)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        record_model(checkpoint, self.generator, prefix="generator.", trainer=self.trainer)
