"""Overlays the MLM loss curves of several pretraining workdirs in one PNG and prints how far they differ.

    python benchmarks/loss_curves.py runs/lc_masked runs/lc_sparse --out docs/sparse_vs_masked_loss.png

Reads each workdir's metrics.jsonl (train/loss every log_every steps, eval/loss at each evaluation); the
first workdir is the reference of the printed differences. Imports numpy, matplotlib and the standard
library only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np


def curves(workdir: Path) -> dict[str, dict[int, float]]:
    """{"train/loss": {step: loss}, "eval/loss": {step: loss}} from workdir/metrics.jsonl."""
    path = workdir / "metrics.jsonl"
    out: dict[str, dict[int, float]] = {"train/loss": {}, "eval/loss": {}}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON line ({error})") from None
            for key, series in out.items():
                if key in record:
                    series[record["step"]] = record[key]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    runs = {workdir.name: curves(workdir) for workdir in args.workdirs}
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, key in zip(axes, ("train/loss", "eval/loss"), strict=True):
        for name, run in runs.items():
            steps = sorted(run[key])
            axis.plot(
                steps, [run[key][s] for s in steps], marker="." if key == "eval/loss" else None, label=name
            )
        axis.set_xlabel("step")
        axis.set_ylabel(key)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(args.out, dpi=110)
    reference_name, reference = next(iter(runs.items()))
    for name, run in list(runs.items())[1:]:
        for key in ("train/loss", "eval/loss"):
            common = sorted(set(reference[key]) & set(run[key]))
            diff = np.array([run[key][s] - reference[key][s] for s in common])
            if len(diff):
                last = common[-1]
                spread = f"mean {diff.mean():+.4f}, max |.| {np.abs(diff).max():.4f} over {len(diff)} points"
                ends = f"step {last}: {reference[key][last]:.4f} vs {run[key][last]:.4f}"
                print(f"{name} - {reference_name} {key}: {spread}; {ends}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
