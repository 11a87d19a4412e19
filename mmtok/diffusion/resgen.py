"""ResGen: masked generation of deep residual-VQ tokens by predicting cumulative embeddings.

Kim, Moon, Lee & Cho (ICML 2025, "Efficient Generative Modeling with Residual Vector Quantization-Based
Tokens", arXiv 2412.10208). Tokens x ∈ [V]^{L×D} come from a residual tokenizer: L positions (frames,
grid cells), D depths, and the latent of position i is Σ_j e_j(x_ij), e_j the depth-j codewords
(:meth:`mmtok.codecs.base.Tokenizer.codebook_vectors`). Instead of predicting the D tokens of a
position one by one, the model predicts the **sum of the embeddings of its masked tokens** with a
mixture of Gaussians, and sampling re-quantizes that vector into tokens, so the number of network
calls does not depend on D (nor on L). The authors released no code; what the paper fixes and what
mmtok chooses are kept apart below (docs/research/resgen_method.md lists the sources).

- **Forward masking, finest first**: a masked count n = ⌈γ · L · D⌉ is spread
  over positions as counts k_i by drawing n of the L · D slots uniformly without replacement (a
  multivariate hypergeometric draw, so k_i ≤ D), and position i masks its k_i deepest tokens
  (depths D − k_i .. D − 1). γ(r) with r ~ U(0, 1) is MaskGIT's masking ratio, cos(π r / 2) by default
  (mean 2/π: most draws mask most tokens; the paper's exact γ was not recoverable). With the opposite
  skew, 1 − cos(π r / 2), a position's coarse token is masked so rarely (all D of its slots must be
  drawn) that a digits model's predictions at 500 steps were no better than zero (docs/benchmarks.md).
- **Target**: z_i = Σ_j e_j(x_ij) · (1 − m_ij) (m = 1: visible), the cumulative embedding of the masked
  tokens: :func:`cumulative_embedding`.
- **Loss**: L_mask = −log p_θ(z_i | x ⊙ m), a mixture of K diagonal Gaussians per position
  (:class:`MixtureHead`, :func:`mixture_nll`), averaged over positions with k_i > 0 and divided by
  the latent width (nats per dimension). The paper trains a Jensen split of this NLL into a
  classification and a regression term; with the posterior responsibilities (stop-gradient) that split
  has exactly the NLL's gradient, so mmtok trains the NLL itself and logs the two parts. Two options
  (mmtok's, not the paper's) rebalance it: ``regression_beta`` β > 0 weighs each dimension's
  regression term by sg(σ^{2β}) (β-NLL), and ``classification_weight`` w counts the classification
  part w times (w = d gives the choice of component the weight of a token's cross-entropy against the
  d per-dimension regression terms). On the plain NLL the 1/σ² gradients of each position's few finest,
  near-exact masked tokens drown the rest: a digits model barely read its context and drew 26-30 %
  readable digits; with β = 0.5 and w = d, 97.5 % (w alone about 83 %, β alone no better than the plain
  NLL; docs/benchmarks.md). Targets are
  divided by ``latent_scale`` (the RMS of the first depth's codewords) so the head works near unit scale.
- **Input**: the backbone embeds each depth's visible token and a per-depth mask id for the masked
  ones, summed over depths (the MusicGen sum of :class:`~mmtok.codebook_transformer.CodebookTransformer`).
- **Sampling** (:func:`resgen_sample`): from all-masked, each of ``num_steps`` steps samples z_i from
  the (guided) mixture, adds it as the residual to re-quantize at the position's masked depths
  (:func:`requantize`, shallowest first, nearest codeword), scores every proposed token, keeps the
  surest and re-masks the rest, so that after step s a cosine share ⌊cos(π s / 2N) · L · D⌋ of the
  tokens is still masked. The confidence of a proposed token is the log-probability of the drawn
  component plus the token's under a soft assignment of the residual to that depth's codewords with
  the component's variance (log p(k) + log p(token | k)), plus Gumbel noise scaled by
  ``choice_temperature`` and annealed to zero (MaskGIT's choice temperature: the paper's "temperature
  on confidence"). Counts per position are taken from the top-ranked tokens
  and revealed shallowest first, so every position stays "visible prefix, masked suffix".
  ``temperature`` divides the mixture logits and multiplies the Gaussians' standard deviations,
  ``top_k`` / ``top_p`` truncate the mixture weights, and classifier-free guidance extrapolates the
  mixture logits and every component's mean (the paper's guided form was not recoverable).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from mmtok.codebook_transformer import CodebookTransformer
from mmtok.diffusion.masked import sample_times
from mmtok.diffusion.samplers import maskgit_masked_count
from mmtok.diffusion.schedules import build_schedule
from mmtok.errors import UsageError
from mmtok.generators import TokenGenerator
from mmtok.patterns import ParallelPattern, build_pattern
from mmtok.sampling import PRECISIONS, process_logits, sample_categorical
from mmtok.tokens import Tokens

Mixture = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(logits [..., K], means [..., K, d], log_scales [..., K, d]) of a diagonal Gaussian mixture."""


# ----------------------------------------------------------------------------- the pieces of the method
def mask_finest_first(valid: torch.Tensor, depth: int, fraction: torch.Tensor, *,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Which tokens are masked, [B, D, T]: for item b, n = ⌈fraction_b · N_b · D⌉ (at least 1) of its
    N_b · D slots (``valid [B, T]`` positions × ``depth``) are drawn uniformly without replacement, and
    each position masks as many of its **deepest** tokens as slots were drawn there."""
    batch, length = valid.shape
    slots = valid[:, :, None].expand(-1, -1, depth).reshape(batch, -1)
    count = slots.sum(1)
    n = torch.ceil(fraction.to(valid.device).double() * count).long().clamp(min=1)
    n = torch.minimum(n, count)
    scores = torch.rand(slots.shape, generator=generator).to(valid.device).masked_fill(~slots, 2.0)
    rank = scores.argsort(1).argsort(1)
    per_position = (rank < n[:, None]).reshape(batch, length, depth).sum(-1)  # k_i
    depths = torch.arange(depth, device=valid.device)[None, :, None]
    return depths >= depth - per_position[:, None, :]


def cumulative_embedding(codes: torch.Tensor, masked: torch.Tensor, codewords: torch.Tensor) -> torch.Tensor:
    """z [B, T, d] = Σ_j masked[b, j, t] · e_j(codes[b, j, t]): the sum of the masked tokens' codewords
    (``codewords [D, V, d]``) at every position, zero where nothing is masked."""
    depth = codes.shape[1]
    vectors = torch.stack([codewords[j][codes[:, j].clamp(min=0)] for j in range(depth)], dim=1)  # [B, D, T, d]
    return (vectors * masked[..., None]).sum(1)


class MixtureHead(nn.Module):
    """hidden [..., H] -> a mixture of ``components`` diagonal Gaussians over a ``latent_dim`` vector."""

    def __init__(self, dim: int, latent_dim: int, components: int):
        super().__init__()
        self.components, self.latent_dim = components, latent_dim
        self.norm = nn.LayerNorm(dim)
        self.logits = nn.Linear(dim, components)
        self.means = nn.Linear(dim, components * latent_dim)
        self.log_scales = nn.Linear(dim, components * latent_dim)
        nn.init.zeros_(self.log_scales.weight)
        nn.init.zeros_(self.log_scales.bias)

    def forward(self, hidden: torch.Tensor) -> Mixture:
        hidden = self.norm(hidden)
        shape = hidden.shape[:-1] + (self.components, self.latent_dim)
        log_scales = self.log_scales(hidden).reshape(shape).clamp(-7.0, 3.0)
        return self.logits(hidden), self.means(hidden).reshape(shape), log_scales


def gaussian_nll_terms(mixture: Mixture, z: torch.Tensor) -> torch.Tensor:
    """−log N(z_d; μ_kd, σ_kd²) for every component and dimension, [..., K, d] (float32)."""
    _, means, log_scales = (x.float() for x in mixture)
    z = z.float()[..., None, :]
    return 0.5 * ((z - means) / log_scales.exp()).pow(2) + log_scales + 0.5 * math.log(2 * math.pi)


def component_log_densities(mixture: Mixture, z: torch.Tensor) -> torch.Tensor:
    """log π_k + log N(z; μ_k, diag σ_k²) for every component, [..., K] (float32)."""
    return mixture[0].float().log_softmax(-1) - gaussian_nll_terms(mixture, z).sum(-1)


def mixture_nll(mixture: Mixture, z: torch.Tensor) -> torch.Tensor:
    """−log Σ_k π_k N(z; μ_k, diag σ_k²) per vector, [...]."""
    return -component_log_densities(mixture, z).logsumexp(-1)


def mixture_split(mixture: Mixture, z: torch.Tensor, *,
                  beta: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The NLL and the paper's Jensen split of it with the posterior responsibilities q(k | z)
    (stop-gradient): (NLL, classification E_q[−log π_k], regression E_q[−log N(z; μ_k, σ_k)]), per
    vector, from one pass over the components. Classification plus regression minus the entropy of q
    is the NLL.

    ``beta`` > 0 weighs each dimension's regression term by sg(σ_kd^{2β}) (β-NLL: Seitzer et al. 2022,
    Eq. 5): with learned scales the NLL's gradient grows as 1/σ², so near-exact targets (a position's
    few finest masked tokens) drown the rest; β = 1 gives the means the gradient of a squared error."""
    log_weights = mixture[0].float().log_softmax(-1)
    terms = gaussian_nll_terms(mixture, z)
    joint = log_weights - terms.sum(-1)
    q = joint.softmax(-1).detach()
    if beta:
        terms = terms * (2 * beta * mixture[2].float()).exp().detach()
    return -joint.logsumexp(-1), -(q * log_weights).sum(-1), (q * terms.sum(-1)).sum(-1)


def sample_mixture(mixture: Mixture, *, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None, generator: torch.Generator | None = None,
                   precision: str = "float64") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One vector per mixture, [..., d]: a component drawn from the weights at ``temperature`` (logits
    ÷ temperature, then top-k / top-p), then its Gaussian with standard deviations × ``temperature``.
    Also returns the drawn component's mean variance [...] (× temperature²), the uncertainty
    :func:`requantize` scores tokens with, and its log-probability [...] among the components."""
    logits, means, log_scales = mixture
    weights = process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    component = sample_categorical(weights, generator=generator, precision=precision)
    index = component[..., None, None].expand(*component.shape, 1, means.shape[-1])
    mean = torch.gather(means, -2, index)[..., 0, :]
    scale = torch.gather(log_scales, -2, index)[..., 0, :].exp() * temperature
    noise = torch.randn(mean.shape, generator=generator).to(mean.device)
    log_weight = weights.float().log_softmax(-1).gather(-1, component[..., None])[..., 0]
    return mean + scale * noise, scale.pow(2).mean(-1), log_weight


def requantize(z: torch.Tensor, masked: torch.Tensor, codewords: torch.Tensor,
               variance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual-quantize the cumulative vectors ``z [B, T, d]`` at each position's masked depths
    (``masked [B, D, T]``, a suffix of depths), shallowest first: code = argmin_v ‖r − e_j(v)‖, then
    r ← r − e_j(code). Returns (codes [B, D, T], 0 where not masked; log-probabilities [B, D, T] of the
    codes under the soft assignment softmax_v(−‖r − e_j(v)‖² / 2σ²) with σ² = ``variance [B, T]``,
    zero without ``variance`` or where not masked)."""
    residual = z.float()
    codes = torch.zeros(masked.shape, dtype=torch.long, device=z.device)
    log_probs = torch.zeros(masked.shape, device=z.device)
    for j in range(masked.shape[1]):
        here = masked[:, j]  # [B, T]
        if not bool(here.any()):
            continue
        table = codewords[j].float()  # [V, d]
        distances = (residual.pow(2).sum(-1, keepdim=True) - 2 * residual @ table.T
                     + table.pow(2).sum(-1)[None, None])  # [B, T, V]
        chosen = distances.argmin(-1)
        codes[:, j] = torch.where(here, chosen, 0)
        if variance is not None:
            soft = (-distances / (2 * variance[..., None].float().clamp(min=1e-8))).log_softmax(-1)
            log_probs[:, j] = torch.where(here, soft.gather(-1, chosen[..., None])[..., 0], 0.0)
        residual = residual - table[chosen] * here[..., None]
    return codes, log_probs


@torch.no_grad()
def resgen_sample(predict: Callable[[torch.Tensor, torch.Tensor], Mixture], codes: torch.Tensor,
                  masked: torch.Tensor, codewords: torch.Tensor, *, num_steps: int, latent_scale: float = 1.0,
                  temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                  choice_temperature: float = 1.0, generator: torch.Generator | None = None,
                  precision: str = "float64") -> tuple[torch.Tensor, dict]:
    """ResGen's iterative unmasking (module docstring) in ``num_steps`` network calls, whatever D and L.

    ``predict(codes, masked) -> mixture`` per position (of z / ``latent_scale``) for the current codes
    [B, D, T] and mask [B, D, T]; ``masked`` marks the tokens to generate (a suffix of depths at every
    position), the other ``codes`` are kept. Returns (codes, stats)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be ≥ 1, got {num_steps}")
    codes, masked = codes.clone(), masked.clone()
    batch, depth, length = masked.shape
    total = masked.flatten(1).sum(1)
    depths = torch.arange(depth, device=masked.device)[None, :, None]
    calls = 0
    for i in range(num_steps):
        if not bool(masked.any()):
            break
        mixture = predict(codes, masked)
        calls += 1
        z, variance, log_weight = sample_mixture(mixture, temperature=temperature, top_k=top_k, top_p=top_p,
                                                 generator=generator, precision=precision)
        proposal, log_probs = requantize(z * latent_scale, masked, codewords, variance * latent_scale ** 2)
        log_probs = log_probs + log_weight[:, None, :]  # log p(component) + log p(token | component)
        ratio = (i + 1) / num_steps
        reveal_count = masked.flatten(1).sum(1) - maskgit_masked_count(total, masked.flatten(1).sum(1), ratio)
        uniform = torch.rand(masked.shape, generator=generator, dtype=PRECISIONS[precision]).to(masked.device)
        gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-30)))
        confidence = (log_probs.to(gumbel.dtype) + choice_temperature * (1 - ratio) * gumbel)
        confidence = confidence.masked_fill(~masked, -math.inf).flatten(1)
        rank = confidence.argsort(1, descending=True).argsort(1).reshape(masked.shape)
        per_position = (masked & (rank < reveal_count[:, None, None])).sum(1)  # [B, T] tokens to reveal
        first_masked = depth - masked.sum(1)  # [B, T]
        reveal = masked & (depths < (first_masked + per_position)[:, None, :])
        codes = torch.where(reveal, proposal, codes)
        masked &= ~reveal
    return codes, {"denoiser_calls": calls, "revealed": int(total.sum())}


# ----------------------------------------------------------------------------- the generator
class ResGenGenerator(TokenGenerator):
    """A bidirectional transformer over a residual tokenizer's D × T codes with a mixture head.

    Arguments: :class:`~mmtok.generators.TokenGenerator`'s (the pattern can only be ``parallel``: a
    position is a frame or grid cell holding D depths), plus ``components`` (K of the mixture),
    ``classification_weight`` and ``regression_beta`` (how the loss weighs the choice of component and,
    by β-NLL, the regression: :func:`mixture_split`; 1 and 0 train the plain NLL),
    ``schedule`` (the masking ratio γ(r) is the schedule's α(r): ``"cosine"``, cos(π r / 2), or
    ``"log_linear"``, 1 − r: uniform ratios), and
    ``latent_dim`` / ``latent_scale`` (the codewords' width and the RMS of the first depth's
    codewords; taken from the tokenizer when it is a local folder, and recorded). The backbone needs
    no token heads (``heads: false``). The codewords are read from the tokenizer, never stored here:
    :meth:`load_tokenizer` (which ``mmtok generate`` and training call) keeps them.
    """

    samplers = ("resgen",)

    def __init__(self, *, tokenizer: str, backbone: CodebookTransformer | dict, conditions: Sequence[dict] = (),
                 positions: str = "sequential", grid: Sequence[int] | None = None, frame_rate: float | None = None,
                 sample_rate: int | None = None, task: dict | None = None, sampling: dict | None = None,
                 components: int = 8, classification_weight: float = 1.0,
                 regression_beta: float = 0.0, schedule: str = "cosine", latent_dim: int | None = None,
                 latent_scale: float | None = None, pattern: str | dict = "parallel"):
        if type(build_pattern(pattern)) is not ParallelPattern:
            raise ValueError(f"ResGen reads every position's depths together: its pattern is 'parallel', "
                             f"got {pattern!r}")
        self._codewords: torch.Tensor | None = None
        self._latent = (latent_dim, latent_scale)
        super().__init__(tokenizer=tokenizer, backbone=backbone, pattern=pattern, conditions=conditions,
                         positions=positions, grid=grid, frame_rate=frame_rate, sample_rate=sample_rate, task=task,
                         sampling=sampling)
        if self.backbone.end_token:
            raise ValueError("a ResGen backbone has no end token (the length is given first)")
        latent_dim, latent_scale = self._latent
        if latent_dim is None or latent_scale is None:
            raise ValueError(f"ResGen needs latent_dim and latent_scale: give them, or a local tokenizer folder "
                             f"to read them from (got {tokenizer!r})")
        self.latent_dim, self.latent_scale = int(latent_dim), float(latent_scale)
        self.schedule = build_schedule(schedule)
        self.classification_weight, self.regression_beta = float(classification_weight), float(regression_beta)
        self.head = MixtureHead(self.backbone.dim, self.latent_dim, components)
        self.record_config(latent_dim=self.latent_dim, latent_scale=self.latent_scale)

    def load_tokenizer(self, tokenizer: str | None = None, *, near=None):
        """The tokenizer (see :meth:`TokenGenerator.load_tokenizer`); its codewords become this
        generator's re-quantization tables (their width must be ``latent_dim``)."""
        model = super().load_tokenizer(tokenizer, near=near)
        vectors = model.codebook_vectors()[: self.num_codebooks]
        width = vectors[0].shape[-1]
        latent_dim, latent_scale = self._latent  # (None, None) until a tokenizer or the config gives them
        if latent_dim not in (None, width):
            raise ValueError(f"tokenizer {tokenizer or self.tokenizer_id}: codewords of width {width}, but this "
                             f"ResGen generator models vectors of width {latent_dim}")
        if latent_scale is None:
            latent_scale = float(vectors[0].float().pow(2).mean().sqrt())
        self._latent = (width, latent_scale)
        self._codewords = torch.stack([v.float() for v in vectors])  # [D, V, d]
        return model

    @property
    def codewords(self) -> torch.Tensor:
        """[D, V, d] on the backbone's device (loaded with the tokenizer)."""
        if self._codewords is None:
            self.load_tokenizer()
        if self._codewords.device != self.backbone.device:
            self._codewords = self._codewords.to(self.backbone.device)
        return self._codewords

    @property
    def stops_by_itself(self) -> bool:
        return False

    @property
    def mask_ids(self) -> torch.Tensor:
        """The mask id of every depth, [1, D, 1]."""
        return torch.tensor(self.codebook_sizes, device=self.backbone.device)[None, :, None]

    def mixture(self, codes: torch.Tensor, masked: torch.Tensor, conditions: dict, *, lengths: torch.Tensor,
                null: bool = False) -> Mixture:
        """The mixture over each position's cumulative masked embedding (÷ latent_scale), given the
        visible tokens of ``codes [B, D, T]`` (``masked [B, D, T]`` shown as the mask ids)."""
        batch, _, length = codes.shape
        lengths = lengths.to(codes.device)
        frames = torch.arange(length, device=codes.device)
        valid = frames[None] < lengths[:, None]
        inputs = torch.where(masked | ~valid[:, None], self.mask_ids, codes)
        on_frames = self.step_conditions(conditions, lengths=lengths, step_frames=frames, null=null)
        prefix = self.prefix(conditions, batch_size=batch, null=null)
        positions = self.full_positions(prefix, self.coordinates(frames), batch)
        hidden = self.backbone.hidden(inputs, prefix=prefix, steps_valid=valid, causal=False, positions=positions,
                                      step_embeddings=on_frames)
        return self.head(hidden)

    def loss(self, batch: dict, *, rng: torch.Generator | None = None,
             t: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """The mixture NLL of the cumulative masked embedding per masked position (plus
        (``classification_weight`` − 1) × its classification part; with ``regression_beta`` the split
        with β-weighted regression instead), in nats per latent dimension, at ratios γ(r) drawn per item
        (r evenly spread over the batch, or the given ``t`` [B] as r), plus the conditions' auxiliary
        losses."""
        codes = batch["codes"][:, : self.num_codebooks]
        batch_size, depth, length = codes.shape
        lengths = batch.get("lengths")
        lengths = (torch.full((batch_size,), length) if lengths is None else lengths).to(codes.device)
        valid = torch.arange(length, device=codes.device)[None] < lengths[:, None]
        if t is None:
            t = sample_times(batch_size, generator=rng, device=codes.device)
        masked = mask_finest_first(valid, depth, self.schedule.alpha(t), generator=rng)  # γ(r) at r = t
        target = cumulative_embedding(codes, masked, self.codewords) / self.latent_scale
        mixture = self.mixture(codes, masked, batch, lengths=lengths)
        scored = masked.any(1)  # [B, T] positions with something to predict
        nll, classification, regression = mixture_split(tuple(part[scored] for part in mixture), target[scored],
                                                        beta=self.regression_beta)
        if self.regression_beta:  # the split itself (q has no gradient: its entropy would add none)
            loss = (self.classification_weight * classification + regression).mean() / self.latent_dim
        else:
            loss = (nll + (self.classification_weight - 1.0) * classification).mean() / self.latent_dim
        logs = {"masked_fraction": (masked.sum() / (valid.sum() * depth)).detach()}
        if not self.training:
            logs.update(nll=nll.mean().detach() / self.latent_dim, classification=classification.mean().detach(),
                        regression=regression.mean().detach() / self.latent_dim,
                        requantized_accuracy=self._requantized_accuracy(mixture, codes, masked))
        return self.add_auxiliary_losses(loss, logs, batch)

    def _requantized_accuracy(self, mixture: Mixture, codes: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """How many masked tokens the most likely component's mean re-quantizes to exactly."""
        with torch.no_grad():
            logits, means, _ = mixture
            best = logits.argmax(-1)[..., None, None].expand(*logits.shape[:-1], 1, means.shape[-1])
            mean = torch.gather(means, -2, best)[..., 0, :] * self.latent_scale
            predicted, _ = requantize(mean, masked, self.codewords)
            return (predicted == codes)[masked].float().mean() if masked.any() else torch.tensor(0.0)

    @torch.no_grad()
    def generate(self, conditions: dict, *, lengths: torch.Tensor, rng: torch.Generator | None = None,
                 sampler: str | None = None, steps: int | None = None, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, cfg_scale: float = 1.0,
                 choice_temperature: float = 1.0, precision: str = "float64") -> Tokens:
        """Codes of ``lengths`` frames per item in ``steps`` network calls (default 16; twice as many
        with classifier-free guidance, ``cfg_scale`` ≠ 1), by :func:`resgen_sample`. Statistics in
        :attr:`last_stats`."""
        self.check_sampler(sampler)
        if steps is not None and steps < 1:
            raise UsageError(f"steps {steps}: must be ≥ 1")
        if temperature <= 0:
            raise UsageError(f"temperature {temperature}: must be > 0")
        device = self.backbone.device
        lengths = lengths.to(device)
        length = int(lengths.max())
        valid = torch.arange(length, device=device)[None] < lengths[:, None]
        masked = valid[:, None, :].expand(-1, self.num_codebooks, -1).clone()
        codes = torch.zeros(masked.shape, dtype=torch.long, device=device)

        def predict(current: torch.Tensor, still_masked: torch.Tensor) -> Mixture:
            mixture = self.mixture(current, still_masked, conditions, lengths=lengths)
            if cfg_scale == 1.0:
                return mixture
            logits_u, means_u, _ = self.mixture(current, still_masked, conditions, lengths=lengths, null=True)
            logits, means, log_scales = mixture
            return (logits_u + cfg_scale * (logits - logits_u), means_u + cfg_scale * (means - means_u), log_scales)

        codes, stats = resgen_sample(predict, codes, masked, self.codewords, num_steps=steps or 16,
                                     latent_scale=self.latent_scale, temperature=temperature, top_k=top_k,
                                     top_p=top_p, choice_temperature=choice_temperature, generator=rng,
                                     precision=precision)
        stats["denoiser_calls"] *= 1 if cfg_scale == 1.0 else 2
        self.last_stats = stats
        return self.tokens(codes.masked_fill(~valid[:, None], 0), lengths)
