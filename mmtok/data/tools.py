"""The Debian programs the embedded corpora are built with (espeak-ng, flite, fluidsynth)."""

from __future__ import annotations

import shutil


def debian_tool(name: str, *, needed_for: str) -> str:
    """Path of the program ``name``; a RuntimeError naming the apt-get command when it is missing."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} was not found on PATH; {needed_for} needs it. Install it with "
            f"`apt-get install -y {name}` (add --no-install-recommends to keep it small) or run `make setup`."
        )
    return path
