"""What the benches that compare Hub folders share: ``NAME=FOLDER`` arguments and publishing a table."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmtok.hub import write_card_section


def named_folders(parser: argparse.ArgumentParser, items: list[str], flag: str) -> dict[str, Path]:
    """``["name=folder", ...]`` -> {name: Path(folder)}; a malformed item is a parser error naming ``flag``."""
    folders = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            parser.error(f"{flag} {item!r}: expected NAME=FOLDER")
        folders[name] = Path(folder)
    return folders


def publish(text: str, *, out: str | None, folders: list[Path], section: str, cards: bool) -> None:
    """Print the result, write it to ``out`` if given, and into each folder's model card if ``cards``."""
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text.rstrip("\n") + "\n")
    if cards:
        for folder in folders:
            write_card_section(folder, section, text)
