"""The plain progress lines a run sent to a log file shows."""

from __future__ import annotations

import io
import re

import lightning as L
import torch

from mmtok.training.callbacks import PlainProgress


class _Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = (self.linear(batch[0]).squeeze(-1) - batch[0].sum(-1)).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", (self.linear(batch[0]).squeeze(-1) - batch[0].sum(-1)).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(callback: PlainProgress, max_steps: int = 12, val_check_interval: int | None = None) -> None:
    data = torch.utils.data.TensorDataset(torch.randn(64, 2, generator=torch.Generator().manual_seed(0)))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    trainer = L.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[callback], log_every_n_steps=1,
                        val_check_interval=val_check_interval, check_val_every_n_epoch=None if val_check_interval
                        else 1, limit_val_batches=2 if val_check_interval else 0, num_sanity_val_steps=2)
    trainer.fit(_Regression(), loader, loader if val_check_interval else None)


def test_a_line_every_n_steps_with_the_loss_and_the_time_left():
    stream = io.StringIO()  # not a terminal
    _fit(PlainProgress(every_n_steps=4, stream=stream))
    lines = stream.getvalue().splitlines()
    assert [re.match(r"fit step (\d+)/12", line).group(1) for line in lines] == ["4", "8", "12"]
    losses = [float(re.search(r"train/loss ([0-9.e+-]+)", line).group(1)) for line in lines]
    assert losses[-1] < losses[0]  # the logged value, not a placeholder
    assert "min left" in lines[0] and "min left" not in lines[-1]


def test_silent_in_a_terminal_unless_asked():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    quiet, loud = Terminal(), Terminal()
    _fit(PlainProgress(every_n_steps=4, stream=quiet), max_steps=4)
    _fit(PlainProgress(every_n_steps=4, stream=loud, always=True), max_steps=4)
    assert quiet.getvalue() == "" and loud.getvalue().startswith("fit step 4/4")


def test_a_line_after_each_validation_with_its_metrics_and_none_for_the_sanity_check():
    stream = io.StringIO()
    _fit(PlainProgress(every_n_steps=100, stream=stream), max_steps=12, val_check_interval=6)
    lines = stream.getvalue().splitlines()
    assert [re.match(r"validation at step (\d+) \| val/loss ([0-9.e+-]+)$", line).group(1) for line in lines] \
        == ["6", "12"]
    losses = [float(line.rsplit(" ", 1)[1]) for line in lines]
    assert losses[1] < losses[0]
