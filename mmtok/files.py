"""Files written so that an interrupted run never leaves one that a rerun would trust.

Every output goes to a temporary file next to its destination (same folder, same suffix, so writers
that infer the format from the name still work) and is renamed onto it once complete: on one
filesystem the rename is atomic, so a file under its final name is always whole. A folder run can
then skip the outputs that exist (:func:`process_files`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from mmtok.errors import DataError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write instead of ``path``; renamed onto ``path`` when the block succeeds,
    removed when it fails. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def process_files(pairs: list[tuple[Path, Path | None]], work: Callable[[Path, Path | None], object], *, desc: str,
                  overwrite: bool = False, fail_fast: bool = False) -> int:
    """Run ``work(source, target)`` for every pair, past any file that fails: outputs that exist are
    skipped unless ``overwrite`` (they were written atomically, so they are whole; a target of None
    is never skipped); a failure is noted and the run goes on (``fail_fast``, or a run of one file:
    it stops there). At the end the failures are listed on stderr, one line each, and a
    :class:`~mmtok.errors.DataError` counts them. Returns the number of files written."""
    fail_fast = fail_fast or len(pairs) == 1  # one file: its own error is the answer
    written, skipped, failures = 0, 0, []
    for source, target in tqdm(pairs, desc=desc, unit="file", disable=len(pairs) == 1):
        if target is not None and target.exists() and not overwrite:
            skipped += 1
            continue
        try:
            work(source, target)
            written += 1
        except (DataError, OSError, ValueError) as error:
            if fail_fast:
                raise
            failures.append((source, " ".join(str(error).split())))
    if skipped:
        print(f"{desc}: skipped {skipped} file(s) that already exist (--overwrite to redo them)")
    if failures:
        for source, reason in failures:
            line = reason if reason.startswith(str(source)) else f"{source}: {reason}"
            print(f"  failed: {line}", file=sys.stderr)
        raise DataError(f"{len(failures)} of {len(pairs)} file(s) failed (listed above); the other "
                        f"{written + skipped} are written")
    return written
