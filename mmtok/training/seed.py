"""Training SEED (:mod:`mmtok.codecs.seed`) as a LightningModule, one stage per run.

- ``stage="contrastive"`` (stage 1): the image encoder (the ViT built here; a transformers one stays
  frozen), the causal Q-Former and the contrastive heads, by the image-text contrastive loss of the
  last causal query and of the encoder's pooled embedding against the batch's captions.
- ``stage="tokens"`` (stage 2): the encoder and Q-Former frozen; the codebook (EMA), the MLPs around it,
  the reconstruction blocks and the reverse Q-Former, by
  ``λ_vq · commitment + λ_global · MSE(ĝ, g) + λ_cos · (1 − cos(q̂, q))`` (the paper's 5 / 0.5 / 2).
- ``stage="detokenizer"``: everything but the UNet frozen; the UNet learns ε-prediction (DDPM, Ho et al.
  2020, eq. 14) on the images, conditioned on what the images' own *tokens* decode to (so it is trained
  on exactly what it reads at decoding time), the conditions zeroed for a ``condition_dropout`` fraction
  of the batch (classifier-free guidance).

A later stage starts from the weights of the previous one: ``init_from`` (a Hub folder exported by
``mmtok export``) gives the tokenizer, config included, so the architecture is set once, in the stage-1
recipe. Validation logs, per stage: contrastive losses, zero-shot digit accuracy and caption->image
recall (the captions of each class as its prompts); the reconstruction losses and the codebook's usage
and perplexity; the diffusion loss and a png grid of images over what their tokens decode to.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from mmtok.codecs.seed import SeedTokenizer, contrastive_loss
from mmtok.metrics.image import codebook_usage
from mmtok.training.checkpoint import record_model
from mmtok.training.classifier import random_shift
from mmtok.training.media import log_image_examples
from mmtok.training.optim import adamw_warmup_cosine

STAGES = ("contrastive", "tokens", "detokenizer")
TRAINED = {  # the tokenizer's children each stage trains; every other one stays frozen
    "contrastive": ("encoder", "qformer", "image_projection", "query_projection", "text_projection",
                    "image_temperature", "query_temperature"),
    "tokens": ("down", "vq", "up", "reconstruction", "reverse_qformer", "global_head"),
    "detokenizer": ("unet",),
}


@torch.no_grad()
def class_prompt_embeddings(tokenizer: SeedTokenizer, num_classes: int, device: torch.device) -> torch.Tensor:
    """[K, E]: for each digit class the mean of its captions' embeddings, unit norm (zero-shot prompts)."""
    from mmtok.data.images import digit_captions

    prompts = [F.normalize(tokenizer.text_embeddings(digit_captions(k), device), dim=-1).mean(0)
               for k in range(num_classes)]
    return F.normalize(torch.stack(prompts), dim=-1)


def retrieval_recall(text_embeds: torch.Tensor, image_embeds: torch.Tensor, text_labels: torch.Tensor,
                     image_labels: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """Caption -> image retrieval by cosine similarity: recall@k is the fraction of captions whose k
    nearest images hold at least one image of the caption's class (a digit caption names its class and
    nothing else, so any image of that class is a right answer)."""
    similarity = F.normalize(text_embeds, dim=-1) @ F.normalize(image_embeds, dim=-1).T  # [T, I]
    ranked = image_labels[similarity.argsort(dim=1, descending=True)]  # [T, I] labels by rank
    hits = ranked == text_labels[:, None]
    return {f"recall@{k}": float(hits[:, :k].any(1).float().mean()) for k in ks}


class SeedModule(L.LightningModule):
    """One SEED training stage (:data:`STAGES`). ``tokenizer`` builds a new one (stage 1); ``init_from``
    loads one from a Hub folder (any stage; required after stage 1). AdamW with linear warm-up then a
    cosine decay over the run's steps, on the stage's parameters only. ``max_shift``: stage 1 moves each
    training image by up to that many pixels (the images the later stages see are never moved).
    ``prediction`` (stage ``detokenizer`` only): what the UNet learns, over the loaded tokenizer's."""

    def __init__(self, *, stage: str, tokenizer: SeedTokenizer | None = None, init_from: str | None = None,
                 label_smoothing: float = 0.1, lambda_vq: float = 5.0, lambda_global: float = 0.5,
                 lambda_cosine: float = 2.0, condition_dropout: float = 0.1, lr: float = 5e-4,
                 weight_decay: float = 0.05, warmup_steps: int = 100, num_logged_examples: int = 10,
                 decode_steps: int = 25, max_shift: int = 0, prediction: str | None = None):
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if (tokenizer is None) == (init_from is None):
            raise ValueError("give exactly one of tokenizer (a new SEED tokenizer) and init_from (a Hub folder)")
        if stage != "contrastive" and init_from is None:
            raise ValueError(f"stage {stage!r} starts from the previous stage's export: set init_from")
        self.save_hyperparameters(ignore=["tokenizer"])
        if init_from is not None:
            from mmtok.hub import load_pretrained

            tokenizer = load_pretrained(init_from)
            if not isinstance(tokenizer, SeedTokenizer):
                raise ValueError(f"init_from {init_from}: holds a {type(tokenizer).__name__}, expected a SeedTokenizer")
        if prediction is not None:
            if stage != "detokenizer":
                raise ValueError(f"prediction sets what the de-tokenizer learns: stage 'detokenizer', not {stage!r}")
            tokenizer.set_prediction(prediction)
        self.tokenizer = tokenizer
        for name, child in tokenizer.named_children():
            child.requires_grad_(name in TRAINED[stage])
        for name, parameter in tokenizer.named_parameters(recurse=False):
            parameter.requires_grad_(name in TRAINED[stage])
        self._validation: dict[str, list] = {}
        self._noise_scheduler = tokenizer.noise_scheduler()
        self.train()  # Lightning keeps the modes it finds, and a loaded tokenizer comes in eval mode

    def train(self, mode: bool = True):
        """Frozen children stay in eval mode (no dropout, no EMA codebook updates)."""
        super().train(mode)
        for name, child in self.tokenizer.named_children():
            if name not in TRAINED[self.hparams.stage]:
                child.eval()
        return self

    def setup(self, stage: str) -> None:
        self.tokenizer.enable_distributed_sync()

    def configure_optimizers(self):
        hp = self.hparams
        parameters = [p for p in self.tokenizer.parameters() if p.requires_grad]
        return adamw_warmup_cosine(parameters, trainer=self.trainer, lr=hp.lr, weight_decay=hp.weight_decay,
                                   warmup_steps=hp.warmup_steps)

    # -- losses --------------------------------------------------------------------------------
    def contrastive_losses(self, images: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, dict]:
        tok, smoothing = self.tokenizer, self.hparams.label_smoothing
        pooled, queries, _ = tok.image_features(images)
        text = tok.text_embeddings(texts, images.device)
        query_loss = contrastive_loss(tok.query_embedding(queries), text, tok.query_temperature,
                                      label_smoothing=smoothing)
        image_loss = contrastive_loss(tok.image_projection(pooled), text, tok.image_temperature,
                                      label_smoothing=smoothing)
        return query_loss + image_loss, {"query_itc": query_loss.detach(), "image_itc": image_loss.detach(),
                                         "temperature": tok.query_temperature.detach()}

    def token_losses(self, images: torch.Tensor) -> tuple[torch.Tensor, dict]:
        hp, tok = self.hparams, self.tokenizer
        with torch.no_grad():
            _, queries, target_global = tok.image_features(images)
        quantized, codes, commitment = tok.quantize(queries)
        reconstructed, global_embedding = tok.reconstruct(quantized)
        cosine = 1 - F.cosine_similarity(reconstructed, queries, dim=-1).mean()
        mse = F.mse_loss(global_embedding, target_global)
        loss = hp.lambda_vq * commitment + hp.lambda_global * mse + hp.lambda_cosine * cosine
        return loss, {"vq": commitment.detach(), "global_mse": mse.detach(), "cosine": cosine.detach(), "codes": codes}

    def detokenizer_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict]:
        tok = self.tokenizer
        with torch.no_grad():
            queries, global_embedding = tok.conditions(tok.nearest_codes(tok.image_features(images)[1]))
        keep = (torch.rand(len(images), device=images.device) >= self.hparams.condition_dropout).float()
        queries, global_embedding = queries * keep[:, None, None], global_embedding * keep[:, None]
        scheduler = self._noise_scheduler
        x0, noise = images * 2.0 - 1.0, torch.randn_like(images)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(images),), device=images.device)
        noisy = scheduler.add_noise(x0, noise, t)
        target = tok.diffusion_target(x0, noise, t, scheduler)
        loss = F.mse_loss(tok.denoise(noisy, t, queries, global_embedding), target)
        return loss, {}

    def _loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        stage, images = self.hparams.stage, batch["image"]
        if stage == "contrastive":
            if "text" not in batch:
                raise ValueError("stage 'contrastive' needs captions: the corpus has no 'text' per image")
            if self.training and self.hparams.max_shift:
                images = random_shift(images, self.hparams.max_shift)
            return self.contrastive_losses(images, batch["text"])
        if stage == "tokens":
            return self.token_losses(images)
        return self.detokenizer_loss(images)

    def training_step(self, batch: dict | None, batch_idx: int):
        if batch is None:
            return None
        loss, logs = self._loss(batch)
        logs.pop("codes", None)
        size = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=size)
        return loss

    # -- validation ----------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._validation = {"images": [], "labels": [], "embeds": [], "codes": []}

    def validation_step(self, batch: dict | None, batch_idx: int) -> None:
        if batch is None:
            return
        images, stage = batch["image"], self.hparams.stage
        loss, logs = self._loss(batch)
        codes = logs.pop("codes", None)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(images), sync_dist=True)
        self.log_dict({f"val/{k}": v for k, v in logs.items()}, batch_size=len(images), sync_dist=True)
        kept = self._validation
        if isinstance(batch.get("labels"), torch.Tensor):
            kept["labels"].append(batch["labels"])
            with torch.no_grad():
                _, queries, _ = self.tokenizer.image_features(images)
                if stage == "contrastive":
                    kept["embeds"].append(self.tokenizer.query_embedding(queries))
                else:  # what the tokens keep: the regressed global embedding (the pooled embedding's space)
                    kept["embeds"].append(self.tokenizer.conditions(self.tokenizer.nearest_codes(queries))[1])
        if codes is not None:
            kept["codes"].append(codes)
        if stage == "detokenizer" and sum(len(i) for i in kept["images"]) < self.hparams.num_logged_examples:
            kept["images"].append(images[: self.hparams.num_logged_examples])

    def on_validation_epoch_end(self) -> None:
        kept, tok = self._validation, self.tokenizer
        if kept.get("embeds"):
            embeds, labels = torch.cat(kept["embeds"]), torch.cat(kept["labels"])
            prompts = class_prompt_embeddings(tok, int(labels.max()) + 1, embeds.device)
            accuracy = (F.normalize(embeds, dim=-1) @ prompts.T).argmax(1).eq(labels).float().mean()
            self.log("val/zero_shot_accuracy", accuracy, prog_bar=True)
            recall = retrieval_recall(prompts, embeds, torch.arange(len(prompts), device=embeds.device), labels)
            self.log_dict({f"val/{k}": v for k, v in recall.items()})
        if kept.get("codes"):
            usage = codebook_usage(torch.cat(kept["codes"]), tok.codebook_sizes[0])
            self.log_dict({"val/usage": usage["usage"], "val/perplexity": usage["perplexity"]})
        if kept.get("images") and self.trainer.is_global_zero:
            images = torch.cat(kept["images"])[: self.hparams.num_logged_examples]
            decoded = tok.decode(tok.encode(images), steps=self.hparams.decode_steps)
            log_image_examples(self, images, [decoded], names=["decoded"], count=len(images))
        self._validation = {}

    # -- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        record_model(checkpoint, self.tokenizer, prefix="tokenizer.", trainer=self.trainer)
