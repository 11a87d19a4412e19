"""What every generator family shares: the injected backbone, conditions, pattern, positions, the
tokenizer it reads, and the one ``generate`` contract.

A generator references its tokenizer instead of embedding it: the config holds the tokenizer's Hub
folder or repo id and the first ``len(codebook_sizes)`` of its codebooks are modelled, so a
generator folder stays small and any tokenizer (audio, image, video) plugs in. A tokenizer whose
codebooks do not fit the backbone's vocabulary fails with both named. The facts of the tokens it
produces (``grid``, ``frame_rate``, ``sample_rate``) are recorded from the tokenizer when training
starts, so that generated :class:`~mmtok.tokens.Tokens` carry them. A tokenizer in a local folder is
loaded and checked when the generator is built, so a recipe whose backbone does not fit its
tokenizer fails before anything trains (phenaki-pytorch's users meet that as an index error
mid-training); a Hub repo id is checked when it is first loaded.

Every family implements ``generate(conditions, *, lengths, rng, sampler, **sampling) -> Tokens``:
``conditions`` is a dict of batch fields (what the conditions read), ``lengths [B]`` the frames to
generate per item (a generator that stops by itself, :attr:`TokenGenerator.stops_by_itself`, stops
earlier at its end token), ``sampler`` one of :attr:`TokenGenerator.samplers`. What the fields and
lengths mean for a modality is the business of a task (:mod:`mmtok.tasks`), which the config
records (``task``) without the generator ever reading it.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from mmtok.codebook_transformer import CodebookTransformer
from mmtok.conditioning import Conditioner, Prefix, build_condition
from mmtok.errors import UsageError
from mmtok.hub import HubMixin, build_from_spec
from mmtok.patterns import build_pattern, pattern_spec
from mmtok.tokens import Tokens, concrete_grid

POSITION_SCHEMES = ("sequential", "aligned")
SAMPLING_SETTINGS = ("sampler", "steps", "temperature", "top_k", "top_p", "cfg_scale", "choice_temperature")
SAMPLER_SETTINGS = ("steps", "choice_temperature")
"""The settings that belong to one sampler: a recorded value does not carry over to another sampler."""


def _layout(grid) -> tuple[int | None, ...] | None:
    """A recorded grid as a tuple, None (JSON null) kept for an open axis."""
    return None if grid is None else tuple(None if size is None else int(size) for size in grid)


def check_sampling(values: dict, *, source: str = "sampling") -> dict:
    """``values`` if every key is a sampling setting of ``generate``; otherwise the error naming it."""
    unknown = sorted(set(values) - set(SAMPLING_SETTINGS))
    if unknown:
        raise UsageError(f"{source}: {', '.join(unknown)}: not a sampling setting (expected some of "
                         f"{', '.join(SAMPLING_SETTINGS)})")
    if values.get("choice_temperature") is not None and values["choice_temperature"] < 0:
        raise UsageError(f"{source}: choice_temperature {values['choice_temperature']}: must be ≥ 0")
    return dict(values)


class TokenGenerator(nn.Module, HubMixin, ABC):
    """Base of the generator families (:class:`~mmtok.ar.model.ARGenerator`,
    :class:`~mmtok.diffusion.model.MaskedDiffusionGenerator`).

    Args:
        tokenizer: Hub folder or repo id of the tokenizer whose codes are modelled.
        backbone: a :class:`~mmtok.codebook_transformer.CodebookTransformer` (or its
            ``{"class_path", "init_args"}``); its ``codebook_sizes`` are the tokenizer's first ones.
        pattern: a pattern name or ``{"class_path", "init_args"}`` (see :func:`mmtok.patterns.build_pattern`).
        conditions: condition specs (see :func:`mmtok.conditioning.build_condition`).
        positions: ``"sequential"``: prefix and steps numbered 0, 1, 2, ... as one sequence;
            ``"aligned"``: steps at their own coordinates (on a grid: (row, column)) and each
            condition at its own positions (:meth:`~mmtok.conditioning.Condition.positions`).
        grid, frame_rate, sample_rate: the facts of the tokens (recorded from the tokenizer).
        task: the spec of the task that turns requests into conditions and tokens into files
            (``{"class_path": "mmtok.tasks....", "init_args": {...}}``); kept, never read here.
        sampling: default sampling settings (``sampler``, ``steps``, ``temperature``, ``top_k``,
            ``top_p``, ``cfg_scale``), like transformers' ``generation_config``: a release records
            the settings its card's figures were measured with (``mmtok export --sampling``), and
            :meth:`sampling_with` lets what a caller gives explicitly win.
    """

    samplers: tuple[str, ...] = ()

    def __init__(self, *, tokenizer: str, backbone: CodebookTransformer | dict, pattern: str | dict = "parallel",
                 conditions: Sequence[dict] = (), positions: str = "sequential", grid: Sequence[int] | None = None,
                 frame_rate: float | None = None, sample_rate: int | None = None, task: dict | None = None,
                 sampling: dict | None = None):
        super().__init__()
        if positions not in POSITION_SCHEMES:
            raise ValueError(f"positions must be one of {POSITION_SCHEMES}, got {positions!r}")
        self.tokenizer_id = tokenizer
        self.backbone = build_from_spec(backbone, base=CodebookTransformer, source="generator backbone")
        self.aligned = positions == "aligned"
        if self.backbone.coordinate_axes > 1 and not self.aligned:
            raise ValueError(f"a backbone with {self.backbone.coordinate_axes}-axis positions needs the steps' "
                             "coordinates: use positions 'aligned'")
        self.pattern = build_pattern(pattern)
        self.conditioner = Conditioner([build_condition(spec, dim=self.backbone.dim) for spec in conditions])
        self.grid = _layout(grid)
        self.frame_rate, self.sample_rate, self.task = frame_rate, sample_rate, task
        self.sampling = check_sampling(sampling or {})
        self._loaded: list = []  # [name, tokenizer] once loaded (a list: not a submodule)
        if os.path.isdir(tokenizer):  # a local tokenizer is checked now; a Hub repo id when it is loaded
            self.load_tokenizer()
        # The config keeps what was resolved (inventories, class names), so a Hub folder is self-contained.
        self.record_config(backbone=self.backbone.spec(), conditions=self.conditioner.specs(),
                           pattern=pattern_spec(self.pattern))

    # -- the tokenizer ---------------------------------------------------------------------------
    @property
    def codebook_sizes(self) -> list[int]:
        return self.backbone.codebook_sizes

    @property
    def num_codebooks(self) -> int:
        return len(self.codebook_sizes)

    def check_tokenizer(self, codebook_sizes: Sequence[int], *, name: str) -> None:
        """Raise unless the tokenizer's first codebooks are exactly the backbone's vocabulary."""
        sizes = list(codebook_sizes)[: self.num_codebooks]
        if sizes != self.codebook_sizes:
            raise ValueError(f"tokenizer {name} has codebook sizes {list(codebook_sizes)}, but the backbone's "
                             f"vocabulary is {self.codebook_sizes} ({self.num_codebooks} codebooks)")

    def load_tokenizer(self, tokenizer: str | None = None, *, near: str | os.PathLike | None = None):
        """The tokenizer (``tokenizer``, else the configured one), checked against the vocabulary. A
        relative folder that does not exist is also looked for next to ``near`` (this model's folder)."""
        from mmtok.hub import load_pretrained

        name = tokenizer or self.tokenizer_id
        if not os.path.exists(name) and near is not None and (Path(near).parent / Path(name).name).is_dir():
            name = str(Path(near).parent / Path(name).name)
        if self._loaded and self._loaded[0] == name:
            return self._loaded[1]
        model = load_pretrained(name).eval()
        self.check_tokenizer(model.codebook_sizes, name=name)
        self._loaded = [name, model]
        return model

    def adapt_from_autoregressive(self, source: str) -> list[str]:
        """Start from an AR generator's weights (a Hub folder of :class:`~mmtok.ar.model.ARGenerator`
        over the same tokenizer), as Gong et al. (2024, "Scaling Diffusion Language Models via
        Adaptation from Autoregressive Models") turn AR language models into masked diffusion models:
        the backbone is the same, run bidirectionally. Every tensor with the same name and shape is
        copied (the first head drops the AR end-token row; "start" becomes "mask"); the codebooks the
        two share must have the same sizes, and a generator over more codebooks than the AR one (ResGen
        over 8 from an AR TTS over 4) keeps the initialisation of the other codebooks' embeddings.
        Returns the names of this model's tensors that were not copied.

        On the speech corpus this is what makes a small model read its phonemes within a CPU run
        (docs/benchmarks.md, TTS): from scratch, 400 steps leave it at the codes' marginals."""
        import json

        from safetensors.torch import load_file

        from mmtok.hub import CONFIG_NAME, WEIGHTS_NAME, resolve_file

        config = json.loads(resolve_file(source, CONFIG_NAME).read_text())
        if config.get("mmtok_class", "").rsplit(".", 1)[-1] != "ARGenerator":
            raise ValueError(f"adapt_from {source}: an ARGenerator Hub folder is needed, found "
                             f"{config.get('mmtok_class')!r}")
        sizes = list(config.get("backbone", {}).get("init_args", {}).get("codebook_sizes", []))
        shared = min(len(sizes), self.num_codebooks)
        if not shared or sizes[:shared] != self.codebook_sizes[:shared]:
            raise ValueError(f"adapt_from {source}: its codebook sizes {sizes} do not start "
                             f"with this generator's {self.codebook_sizes}")
        weights = load_file(str(resolve_file(source, WEIGHTS_NAME)))
        state, untouched = self.state_dict(), []
        for name, tensor in state.items():
            value = weights.get(name)
            if value is not None and name.startswith("backbone.heads.0.") and value.shape[0] == tensor.shape[0] + 1:
                value = value[:-1]  # the end-token row
            if value is not None and value.shape == tensor.shape:
                tensor.copy_(value.to(tensor.dtype))
            else:
                untouched.append(name)
        if len(untouched) == len(state):
            raise ValueError(f"adapt_from {source}: no tensor fits this generator (different width or depth?)")
        return untouched

    def record_token_facts(self, tokenizer) -> None:
        """Take the tokens' grid, frame rate and sample rate from ``tokenizer`` (and record them)."""
        grid = _layout(tokenizer.grid)
        if self.grid is not None and grid != self.grid:
            raise ValueError(f"the generator's grid {self.grid} is not the tokenizer's {grid}")
        self.grid, self.frame_rate, self.sample_rate = grid, tokenizer.frame_rate, tokenizer.sample_rate
        self.record_config(grid=None if grid is None else list(grid), frame_rate=self.frame_rate,
                           sample_rate=self.sample_rate)

    def record_task(self, task: dict) -> None:
        self.task = task
        self.record_config(task=task)

    def record_sampling(self, **values) -> None:
        """Set (and record) default sampling settings; a None value removes one."""
        merged = {**self.sampling, **check_sampling(values)}
        self.sampling = {key: value for key, value in merged.items() if value is not None}
        self.record_config(sampling=self.sampling)

    def sampling_with(self, **given) -> dict:
        """The settings to sample with: the recorded defaults, overridden by every ``given`` value that
        is not None (a flag the user did not set), with the sampler resolved. The recorded ``steps`` and
        ``choice_temperature`` belong to the recorded sampler: another sampler given without them does not
        inherit them."""
        given = {k: v for k, v in check_sampling(given).items() if v is not None}
        recorded = dict(self.sampling)
        if given.get("sampler", recorded.get("sampler")) != recorded.get("sampler"):
            for key in SAMPLER_SETTINGS:
                recorded.pop(key, None)
        settings = {**recorded, **given}
        settings["sampler"] = self.check_sampler(settings.get("sampler"))
        return settings

    def tokens(self, codes: torch.Tensor, lengths: torch.Tensor) -> Tokens:
        """Generated codes as :class:`Tokens` with the tokenizer's facts."""
        grid = None if self.grid is None else concrete_grid(self.grid, codes.shape[-1])
        return Tokens(codes=codes, lengths=lengths, grid=grid, frame_rate=self.frame_rate,
                      sample_rate=self.sample_rate)

    # -- positions -------------------------------------------------------------------------------
    def coordinates(self, index: torch.Tensor) -> torch.Tensor:
        """Frame indices [S] -> their coordinates: [S] (float) on a time axis, [S, A] on a grid
        (a frame is a grid cell in raster order; indices past a closed grid are clipped to its last
        cell; an open first axis, (None, h, w), goes on as far as the indices do)."""
        axes = self.backbone.coordinate_axes
        if axes == 1:
            return index.float()
        if self.grid is None or len(self.grid) != axes:
            raise ValueError(f"the backbone takes {axes}-axis coordinates but the generator's grid is {self.grid}")
        cells = concrete_grid(self.grid, 1)
        rest = index.clamp(0, None if self.grid[0] is None else math.prod(cells) - 1)
        coordinates = []
        for size in reversed(cells[1:]):  # raster order: the last axis varies fastest
            coordinates.append(rest % size)
            rest = rest // size
        coordinates.append(rest)
        return torch.stack(coordinates[::-1], dim=-1).float()

    def full_positions(self, prefix: Prefix | None, steps: torch.Tensor, batch_size: int) -> torch.Tensor | None:
        """Positions of prefix and steps for the backbone ([B, P + S] or [B, P + S, A]), from the steps'
        coordinates ``steps`` ([S] or [S, A]); None in the sequential scheme."""
        if not self.aligned:
            return None
        steps = steps.expand(batch_size, *steps.shape)
        if prefix is None:
            return steps
        before = prefix.positions.to(steps.device)
        if steps.dim() == 3:  # each condition at the same place on every axis, before the grid's origin
            before = before[..., None].expand(-1, -1, steps.shape[-1])
        return torch.cat([before, steps], dim=1)

    @property
    def frame_aligned(self) -> bool:
        """Whether some condition is placed on the frames, so the length must be known before generating."""
        return self.conditioner.frame_aligned

    def step_conditions(self, conditions: dict, *, lengths: torch.Tensor, step_frames: torch.Tensor,
                        null: bool = False) -> torch.Tensor | None:
        """The frame-placed conditions at each step, [B, S, D] (None without any): step s takes the
        embedding of frame ``step_frames[s]`` (its latest code's; -1: none, zeros), zeros past an
        item's ``lengths``."""
        device = self.backbone.device
        num_frames = max(int(step_frames.max()) + 1, 1) if len(step_frames) else 1
        on_frames = self.conditioner.frames(conditions, lengths=lengths.to(device), num_frames=num_frames,
                                            device=device, null=null)
        if on_frames is None:
            return None
        step_frames = step_frames.to(device)
        return on_frames[:, step_frames.clamp(min=0)] * (step_frames >= 0)[None, :, None]

    def add_auxiliary_losses(self, loss: torch.Tensor, logs: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        """``loss`` plus the conditions' auxiliary losses (:meth:`Condition.auxiliary_loss`, e.g. a
        predictor a task uses at generation time), whose values join ``logs``."""
        extra, more = self.conditioner.auxiliary_loss(batch)
        return (loss if extra is None else loss + extra), {**logs, **more}

    def prefix(self, conditions: dict, *, batch_size: int, null: bool = False) -> Prefix | None:
        """The condition prefix of a batch of conditions (the null condition with ``null``)."""
        device = self.backbone.device
        return self.conditioner(conditions, batch_size=batch_size, null=null, device=device)

    # -- the contract ----------------------------------------------------------------------------
    @property
    @abstractmethod
    def stops_by_itself(self) -> bool:
        """Whether generation may end an item before its requested length (an end token)."""

    @abstractmethod
    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss on a batch with ``codes`` [B, Q', T] (Q' ≥ Q), ``lengths`` and the
        conditions' fields, and a dict of values to log."""

    @abstractmethod
    def generate(self, conditions: dict, *, lengths: torch.Tensor, rng: torch.Generator | None = None,
                 sampler: str | None = None, steps: int | None = None, **sampling) -> Tokens:
        """Tokens for a batch of conditions: ``lengths [B]`` frames per item (at most, for a
        generator that stops by itself), sampled with ``sampler`` (``steps`` where it takes them)
        and ``sampling`` (temperature, top_k, top_p, cfg_scale; choice_temperature where the sampler
        ranks the tokens it reveals: MaskGIT, ResGen)."""

    def check_sampler(self, sampler: str | None) -> str:
        """The sampler to use (the first of :attr:`samplers` for None); an unknown one is named."""
        if sampler is None:
            return self.samplers[0]
        if sampler not in self.samplers:
            raise UsageError(f"sampler {sampler!r}: a {type(self).__name__} samples with {', '.join(self.samplers)}")
        return sampler
