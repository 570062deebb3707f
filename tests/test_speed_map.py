"""benchmarks/speed_map.py at tiny sizes on CPU: every part runs and writes its JSON, table and plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("ultrafastbert-1x11", "ultrafastbert-4x2")


def run(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "benchmarks/speed_map.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_tiny_speed_map_writes_json_table_and_plot_and_replots(tmp_path):
    sizes = [
        "--tokens",
        "64",
        "--batch",
        "1",
        "--seq",
        "16",
        "--layers",
        "1",
        "--rounds",
        "1",
        "--loop-s",
        "0",
    ]
    run("--rows", ",".join(ROWS), *sizes, "--out", str(tmp_path))
    result = json.loads((tmp_path / "speed_map_cpu.json").read_text())
    assert result["machine"]["backend"] == "cpu" and result["dtype"] == "float32"
    assert set(result["parts"]) == {"layer", "train", "encoder"}
    for part, forms in {"layer": {"auto", "masked", "cpu"}, "train": {"auto", "masked", "sparse"}}.items():
        for row in ROWS:
            cells = result["parts"][part]["rows"][row]
            assert set(cells["ms"]) == forms and all(ms > 0 for ms in cells["ms"].values())
            assert cells["baseline_ms"] > 0 and cells["picks"] in forms
    assert set(result["parts"]["encoder"]["rows"][ROWS[0]]["ms"]) == {"auto"}
    table = (tmp_path / "speed_map_cpu.md").read_text()
    assert all(f"| {row} |" in table for row in ROWS) and "crammedbert-3072 (baseline)" in table
    assert (tmp_path / "speed_map_cpu.png").stat().st_size > 0

    replot = tmp_path / "replot"
    run("--plot", str(tmp_path / "speed_map_cpu.json"), "--out", str(replot))
    assert (replot / "speed_map.md").read_text() == table
    assert (replot / "speed_map.png").stat().st_size > 0
