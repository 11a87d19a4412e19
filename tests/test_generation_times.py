"""scripts/generation_times.py: the demo's table of generation times from `mmtok generate` outputs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "generation_times.py"


def load_script():
    spec = importlib.util.spec_from_file_location("generation_times", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_row_per_run_with_the_real_time_factor(tmp_path):
    for run, sampler, seconds in (("ar", "autoregressive", [1.0, 3.0]), ("mdm", "fhs", [2.0])):
        (tmp_path / run).mkdir()
        lines = [{"seconds": s, "sampler": sampler, "generation_s": 2.0} for s in seconds]
        (tmp_path / run / "generated.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    load_script().main(str(tmp_path))
    table = (tmp_path / "timings.md").read_text()
    assert "| ar | autoregressive | 2 | 4 | 2 | 0.5 |" in table and "| mdm | fhs | 1 | 2 | 2 | 1 |" in table
    with pytest.raises(SystemExit, match="no generated.jsonl"):
        load_script().main(str(tmp_path / "ar" / "missing"))
