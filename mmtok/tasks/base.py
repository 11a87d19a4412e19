"""The task interface and how a generator's recorded task is rebuilt."""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch

from mmtok.hub import build_from_spec, class_name


class Task(ABC):
    """What a generator is for: requests -> conditions + lengths, tokens -> files.

    Subclasses take their settings as keyword-only constructor arguments, which :meth:`spec` records
    (``init_args``); a setting measured on the training data is updated by :meth:`measure`.
    """

    def __init__(self, **init_args: Any):
        self.init_args = init_args

    def spec(self) -> dict:
        return {"class_path": class_name(type(self)), "init_args": dict(self.init_args)}

    def measure(self, corpus) -> None:
        """Update settings from a token corpus (:class:`mmtok.data.tokens.TokenCorpus`) when training
        starts; nothing by default."""

    @staticmethod
    @abstractmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """The task's flags of ``mmtok generate``."""

    @abstractmethod
    def run(self, generator, tokenizer, args: argparse.Namespace, *, out: Path, rng: torch.Generator,
            sampling: dict) -> list[Path]:
        """Generate for the request in ``args`` and write the files to ``out``; returns the files.
        ``sampling`` holds the sampler and its options for :meth:`TokenGenerator.generate`."""

    def evaluate(self, generator, tokenizer, judge, data: str | Path, **options) -> list[dict]:
        """Rows of measured figures for ``mmtok evaluate GENERATOR DATA --judge J``, on the corpus'
        ``split`` (an option every task takes, "test" by default, with ``max_items``, ``rng`` and the
        sampling settings)."""
        raise ValueError(f"{type(self).__name__} has no evaluation")


def build_task(spec: dict | None, *, source: str = "generator config") -> Task:
    """The task a generator records (its ``task`` spec); a clear error when it records none."""
    if spec is None:
        raise ValueError(f"{source}: the generator records no task, so `mmtok generate` does not know what to make "
                         "of its tokens; set generator.init_args.task in the recipe, e.g. "
                         "{class_path: mmtok.tasks.images.ClassToImage}")
    return build_from_spec(spec, base=Task, source=source)
