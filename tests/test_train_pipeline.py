"""benchmarks/train_pipeline.py --tiny: the real loop and the bare step side by side, on CPU."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_pipeline_benchmark_reports_real_bare_and_phases(tmp_path):
    command = [sys.executable, "benchmarks/train_pipeline.py", "--tiny", "--seconds", "8", "--steps", "2"]
    done = subprocess.run(
        [*command, "--data_dir", str(tmp_path), "--json", str(tmp_path / "out.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert re.fullmatch(r"pipeline efficiency: \d+\.\d\d", lines[-1]), lines[-1]
    row = next(line for line in lines if line.startswith("configs/tiny.py") and "%" not in line)
    steps, real, whole, bare, ratio = (float(value.replace(",", "")) for value in row.split()[1:])
    assert steps > 0 and whole > 0 and ratio == float(lines[-1].split()[-1])
    assert abs(ratio - real / bare) <= 0.006  # the printed ratio is real / bare, rounded
    phases = next(line for line in lines if line.startswith("configs/tiny.py") and "%" in line)
    assert len(re.findall(r"\d+\.\d \(\s*\d+%\)", phases)) == 7  # input ... checkpoint
    # --data_dir, not the repo's runs/ (tiny.py derives its shard folder: the benchmark uses DATA_DIR itself)
    assert (tmp_path / "tokenizer.json").is_file()
