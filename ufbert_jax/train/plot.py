"""The loss curve of a run (workdir/loss.png), drawn from its metrics.jsonl records."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from matplotlib.figure import Figure

from ufbert_jax import io

PLOT_FILE = "loss.png"


def plot_losses(records: list[dict], path: str | Path) -> None:
    """Train (and eval, where logged) MLM loss against step, as a PNG (written atomically)."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for key, label in (("train/loss", "train"), ("eval/loss", "eval")):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points, strict=True), marker="." if key == "eval/loss" else None, label=label)
    ax.set_xlabel("step (microbatches)")
    ax.set_ylabel("MLM loss (masked positions)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = BytesIO()
    fig.savefig(png, format="png", dpi=120)
    io.write_bytes(path, png.getvalue())
