"""Training of Vec-Tok's parts (:mod:`mmtok.codecs.vectok`).

- :class:`SpeechSSLModule`: HuBERT-style pre-training of the embedded speech model, iteration 1
  (Hsu et al. 2021): k-means over MFCC frames of the training audio gives the targets, fitted once
  before the first step (on rank 0, broadcast to the others) and stored in the model.
- :class:`VecTokModule`: the codec GAN recipe (:class:`~mmtok.training.codec.CodecModule`: mel,
  adversarial and feature-matching losses, the same discriminators) for Vec-Tok's vocoder, with the
  inverse k-means L1 loss as its semantic term; the units (statistics, k-means, BPE, default voice)
  are fitted on the training audio before the first step.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from einops import rearrange
from safetensors.torch import load_file

from mmtok.codecs.vectok import SpeechSSL, VecTok, fit_kmeans, mfcc_frames
from mmtok.hub import WEIGHTS_NAME, load_state_strict, resolve_file
from mmtok.metrics import codec_metrics
from mmtok.training.checkpoint import record_model
from mmtok.training.codec import CodecModule
from mmtok.training.media import log_audio_examples
from mmtok.training.optim import adamw_warmup_cosine

log = logging.getLogger(__name__)


def collect_frames(loader, features, *, max_frames: int) -> torch.Tensor:
    """Up to ``max_frames`` valid frames [N, D] of ``features(audio, lengths) -> ([B, D, T], valid [B, T])``
    over the batches of ``loader``."""
    frames, total = [], 0
    for batch in loader:
        if batch is None:
            continue
        values, valid = features(batch["audio"], batch["lengths"])
        frames.append(rearrange(values, "b d t -> b t d")[valid])
        total += frames[-1].shape[0]
        if total >= max_frames:
            break
    if not frames:
        raise ValueError("no training audio to fit k-means on (every batch was empty or skipped)")
    return torch.cat(frames)[:max_frames]


class SpeechSSLModule(L.LightningModule):
    """Masked prediction of MFCC-cluster targets (HuBERT iteration 1); AdamW with warm-up and cosine decay.

    ``kmeans_frames`` training frames fit the ``ssl.target_centroids`` (scikit-learn mini-batch
    k-means) when the model has none yet; a model that has them (a resumed or ``init_from`` run)
    keeps them.
    """

    def __init__(self, *, ssl: SpeechSSL, lr: float = 5e-4, weight_decay: float = 0.01, warmup_steps: int = 300,
                 mask_start_prob: float = 0.08, mask_span: int = 10, kmeans_frames: int = 100_000):
        super().__init__()
        self.save_hyperparameters(ignore=["ssl"])
        self.ssl = ssl

    def setup(self, stage: str) -> None:
        if stage == "fit" and not bool(self.ssl.target_centroids.abs().sum() > 0):
            centroids = self._fit_targets() if self.trainer.is_global_zero else torch.zeros_like(
                self.ssl.target_centroids)
            self.ssl.target_centroids.copy_(self.trainer.strategy.broadcast(centroids, src=0))

    def _fit_targets(self) -> torch.Tensor:
        def mfcc(audio, lengths):
            valid = self.ssl.frame_valid(audio, lengths)
            return mfcc_frames(audio, lengths, sample_rate=self.ssl.sample_rate, num_frames=valid.shape[1]), valid

        frames = collect_frames(self.trainer.datamodule.train_dataloader(), mfcc,
                                max_frames=self.hparams.kmeans_frames)
        return fit_kmeans(frames, self.ssl.target_centroids.shape[0]).to(self.ssl.target_centroids)

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_warmup_cosine(self.ssl.parameters(), trainer=self.trainer, lr=hp.lr,
                                   weight_decay=hp.weight_decay, warmup_steps=hp.warmup_steps)

    def _loss(self, batch: dict, stage: str) -> torch.Tensor:
        hp = self.hparams
        loss, accuracy = self.ssl.masked_prediction_loss(batch["audio"], batch["lengths"],
                                                         start_prob=hp.mask_start_prob, span=hp.mask_span)
        size = batch["audio"].shape[0]
        self.log(f"{stage}/masked_loss", loss, prog_bar=True, batch_size=size, sync_dist=stage != "train")
        self.log(f"{stage}/masked_accuracy", accuracy, batch_size=size, sync_dist=stage != "train")
        return loss

    def training_step(self, batch: dict | None, batch_idx: int):
        return None if batch is None else self._loss(batch, "train")

    def validation_step(self, batch: dict | None, batch_idx: int) -> None:
        if batch is not None:
            self._loss(batch, "val")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        record_model(checkpoint, self.ssl, prefix="ssl.", trainer=self.trainer)


class VecTokModule(CodecModule):
    """Trains a :class:`~mmtok.codecs.vectok.VecTok`'s vocoder and inverse k-means together.

    ``init_vocoder_from`` starts the vocoder's SEANet decoder from an RVQ codec Hub folder with the same
    decoder (its ``decoder.*`` weights; the frame convolution in front of it starts fresh), so the
    vocoder begins from a decoder that already makes speech. ``fit_frames`` training frames fit the
    units when the model has none, or with ``refit_units`` always (a model started with ``init_from``
    whose units change, e.g. to ``utterance_norm``); a resumed run takes them back from its checkpoint
    (the buffers with the weights, the BPE from the recorded config). ``lambda_semantic`` weighs the
    inverse k-means loss. Validation measures both halves: the vocoder on the true vectors, and
    resynthesis from the units with the utterance's own first ``prompt_seconds`` as the prompt.
    """

    def __init__(self, *, codec: VecTok, init_vocoder_from: str | None = None, fit_frames: int = 200_000,
                 refit_units: bool = False, **options):
        super().__init__(codec=codec, eval_quantizers=(1,), **options)
        self.fit_frames, self.refit_units = fit_frames, refit_units
        if init_vocoder_from is not None:
            weights = load_file(str(resolve_file(init_vocoder_from, WEIGHTS_NAME)))
            decoder = {k[len("decoder."):]: v for k, v in weights.items() if k.startswith("decoder.")}
            load_state_strict(codec.vocoder, decoder, source=f"{init_vocoder_from}: its decoder does not fit the "
                              "vocoder (vocoder_channels and vocoder_latent_dim must be the codec's)")

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit" or (self.codec.units_fitted and not self.refit_units):
            return
        if self.trainer.is_global_zero:
            fitted = self.codec.fit_units(self.trainer.datamodule.train_dataloader(), max_frames=self.fit_frames)
            log.info("Vec-Tok units fitted: %s", fitted)
        names = ("vector_mean", "vector_std", "centroids", "default_prompt")
        state = {name: getattr(self.codec, name) for name in names}
        for name, value in self.trainer.strategy.broadcast(state, src=0).items():
            getattr(self.codec, name).copy_(value)
        bpe = self.trainer.strategy.broadcast(self.codec.bpe.serialize() if self.codec.bpe else None, src=0)
        self.codec.set_bpe(bpe)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        bpe = checkpoint.get("mmtok", {}).get("model_config", {}).get("bpe")
        if bpe is not None:  # the units' BPE, which setup may have refitted on other crops
            self.codec.set_bpe(bpe)

    def _evaluate(self, batch: dict | None, batch_idx: int, stage: str) -> None:
        if batch is None:
            return
        codec, audio, lengths = self.codec, batch["audio"], batch["lengths"]
        vectors, _ = codec.speech_vectors(audio, lengths)
        mask = torch.arange(audio.shape[-1], device=audio.device)[None, None, :] < lengths[:, None, None]
        vocoded = codec.vocode(vectors)[..., :audio.shape[-1]] * mask
        resynthesis = codec.decode(codec.encode(audio, lengths), prompt=audio, prompt_lengths=lengths)
        size = audio.shape[0]
        for name, output in (("vocoder", vocoded), ("resynthesis", resynthesis)):
            metrics = codec_metrics(audio, output, sample_rate=codec.sample_rate, lengths=lengths)
            self.log_dict({f"{stage}/{name}_{k}": v for k, v in metrics.items()}, batch_size=size, sync_dist=True)
            if batch_idx == 0 and stage == "val" and self.trainer.is_global_zero:
                log_audio_examples(self, audio, output, lengths, suffix=name, count=self.hparams.num_logged_examples,
                                   with_original=name == "vocoder")
        self.log(f"{stage}/mel_distance", metrics["mel_distance"], batch_size=size, sync_dist=True, prog_bar=True)
