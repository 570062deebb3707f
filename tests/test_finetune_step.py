"""benchmarks/finetune_step.py --tiny: eval_glue's training and its bare step side by side, on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~45 s on 2 cores (three compiles of a GLUE train step): make test-slow
def test_tiny_finetune_benchmark_reports_both_timings_per_model(tmp_path):
    models = ["crammedbert-3072", "ultrafastbert-1x11:auto"]
    out = tmp_path / "out.json"
    command = [sys.executable, "benchmarks/finetune_step.py", "--tiny", "--steps", "3", "--repeats", "1"]
    done = subprocess.run(
        [*command, "--models", *models, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["model"] for row in rows] == models
    for row in rows:
        assert row["finetune_steps_per_s"] > 0 and row["bare_steps_per_s"] > 0
        assert row["efficiency"] == row["finetune_steps_per_s"] / row["bare_steps_per_s"]
        assert row["vs_first"] == row["finetune_steps_per_s"] / rows[0]["finetune_steps_per_s"]
    printed = [line for line in done.stdout.splitlines() if line.startswith(tuple(models))]
    assert len(printed) == len(models) and all("finetune/bare" in line for line in printed)
