"""What a training checkpoint records so that ``mmtok export`` can rebuild the model without unpickling."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from mmtok.hub import HubMixin, class_name


def record_model(checkpoint: dict, model: HubMixin, *, prefix: str, trainer: L.Trainer | None) -> None:
    """Store the model's class, constructor arguments and state-dict prefix, and the run's recipe."""
    checkpoint["mmtok"] = {
        "model_class": class_name(type(model)),
        "model_config": model.hub_config,
        "model_prefix": prefix,
        "recipe": recipe_text(trainer),
    }


def recipe_text(trainer: L.Trainer | None) -> str:
    """The config LightningCLI saved for this run, if any."""
    if trainer is None or trainer.log_dir is None:
        return ""
    path = Path(trainer.log_dir) / "config.yaml"
    return path.read_text() if path.is_file() else ""
