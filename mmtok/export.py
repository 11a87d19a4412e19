"""Turn a Lightning training checkpoint into a Hub folder (config + safetensors + model card).

The checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain containers only,
never arbitrary pickled objects. The training module recorded the tokenizer's class and constructor
arguments under ``checkpoint["mmtok"]`` (see ``CodecModule.on_save_checkpoint``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmtok.hub import load_state_strict, model_class


def load_tokenizer_from_checkpoint(checkpoint: str | Path):
    """Rebuild the tokenizer a training checkpoint holds; returns (tokenizer, checkpoint dict)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise ValueError(f"{path}: not a loadable Lightning checkpoint ({error})") from error
    info = ckpt.get("mmtok") if isinstance(ckpt, dict) else None
    if not info:
        raise ValueError(f"{path}: no 'mmtok' entry; was it written by an mmtok training module?")
    cls = model_class(info["tokenizer_class"], source=str(path))
    tokenizer = cls(**info["tokenizer_config"])
    prefix = info["tokenizer_prefix"]
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    load_state_strict(tokenizer, state, source=f"{path}: weights do not fit the recorded config")
    return tokenizer.eval(), ckpt


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, data: str | None = None,
                      split: str = "test", max_items: int | None = None) -> Path:
    """Write ``out_dir`` as a Hub folder; with ``data``, measure metrics on its ``split`` for the card."""
    tokenizer, ckpt = load_tokenizer_from_checkpoint(checkpoint)
    info = ckpt["mmtok"]
    recipe = info.get("recipe") or ""
    card = {
        "title": Path(out_dir).name,
        "description": (
            f"A `{type(tokenizer).__name__}` trained with mmtok: {tokenizer.num_codebooks} codebooks of "
            f"{tokenizer.codebook_sizes[0]} codes at {tokenizer.frame_rate:g} frames/s "
            f"({tokenizer.sample_rate} Hz audio)."
        ),
        "recipe": f"Trained for {ckpt.get('global_step', '?')} optimizer steps "
                  f"(epoch {ckpt.get('epoch', '?')}) with this LightningCLI config:\n\n```yaml\n{recipe}```"
        if recipe else f"Trained for {ckpt.get('global_step', '?')} optimizer steps.",
    }
    if data is not None:
        from mmtok.codecs.evaluate import evaluate_codec

        card["metrics"] = evaluate_codec(tokenizer, data, split=split, max_items=max_items)
        card["metrics_note"] = (f"Measured by `mmtok evaluate` on the `{split}` split of `{data}` "
                                "(whole utterances; mel and STFT distances lower is better, SI-SDR in dB).")
    tokenizer.card = card
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)
