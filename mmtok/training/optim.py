"""Learning-rate schedules shared by the training modules."""

from __future__ import annotations

import math

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int):
    """Linear warm-up over ``warmup_steps``, then cosine decay to zero at ``total_steps``."""
    total_steps = max(total_steps, warmup_steps + 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def adamw_warmup_cosine(parameters, *, trainer, lr: float, weight_decay: float, warmup_steps: int) -> dict:
    """What ``configure_optimizers`` returns for AdamW over ``parameters`` with :func:`warmup_cosine` over
    the run's optimizer steps (``trainer.estimated_stepping_batches``), stepped every batch."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    scheduler = warmup_cosine(optimizer, warmup_steps=warmup_steps, total_steps=int(trainer.estimated_stepping_batches))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
