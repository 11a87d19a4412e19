"""wandb logging that never needs the network: offline unless the user has credentials."""

from __future__ import annotations

import netrc
import os

from lightning.pytorch.loggers import WandbLogger


def wandb_credentials_available() -> bool:
    """True when ``WANDB_API_KEY`` is set or ``~/.netrc`` holds a login for api.wandb.ai."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class RunLogger(WandbLogger):
    """:class:`WandbLogger` whose ``offline`` defaults to "no credentials here".

    ``WANDB_MODE`` still wins when set (wandb reads it itself).
    """

    def __init__(self, *, project: str = "mmtok", name: str | None = None, save_dir: str = "runs",
                 offline: bool | None = None, **kwargs):
        if offline is None:
            offline = not wandb_credentials_available()
        os.makedirs(save_dir, exist_ok=True)
        super().__init__(project=project, name=name, save_dir=save_dir, offline=offline, **kwargs)
