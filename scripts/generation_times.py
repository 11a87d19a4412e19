"""Table of what `mmtok generate` wrote under a folder: one row per run (each generated.jsonl), with
its sampler, the seconds of speech and the wall time of generation, to `timings.md` in that folder.

    python scripts/generation_times.py outputs/demo/tts
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mmtok.media import markdown_table


def main(folder: str) -> None:
    root = Path(folder)
    runs = sorted(root.rglob("generated.jsonl"))
    if not runs:
        raise SystemExit(f"{folder}: no generated.jsonl below it (run `mmtok generate --out` there first)")
    rows = []
    for path in runs:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        speech = sum(line["seconds"] for line in lines)
        rows.append({"run": str(path.parent.relative_to(root)), "sampler": lines[0]["sampler"],
                     "utterances": len(lines), "speech_s": round(speech, 2),
                     "generation_s": lines[0]["generation_s"],
                     "real-time factor": round(lines[0]["generation_s"] / max(speech, 1e-9), 3)})
    text = ("Wall time of each `mmtok generate` run (generation and decoding of the whole batch) against the "
            "seconds of speech it produced.\n\n" + markdown_table(rows))
    (root / "timings.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
