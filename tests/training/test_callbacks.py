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

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(callback: PlainProgress, max_steps: int = 12) -> None:
    data = torch.utils.data.TensorDataset(torch.randn(64, 2, generator=torch.Generator().manual_seed(0)))
    trainer = L.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[callback], log_every_n_steps=1)
    trainer.fit(_Regression(), torch.utils.data.DataLoader(data, batch_size=4))


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
