"""The loss curve of a run (workdir/loss.png), drawn from its metrics.jsonl records."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ufbert_jax import io

PLOT_FILE = "loss.png"


def loss_figure(records: list[dict]) -> Figure:
    """Train (and eval, where logged) MLM loss against step on a linear loss axis with ~6 labelled ticks
    (an MLM loss spans a factor of 2 to 5 in a run, where a log axis would label one or two ticks)."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for key, label in (("train/loss", "train"), ("eval/loss", "held-out")):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points, strict=True), marker="." if key == "eval/loss" else None, label=label)
    ax.set_xlabel("step (microbatches)")
    ax.set_ylabel("MLM loss (masked positions)")
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_losses(records: list[dict], path: str | Path) -> None:
    """loss_figure of the records as a PNG (written atomically)."""
    png = BytesIO()
    loss_figure(records).savefig(png, format="png", dpi=120)
    io.write_bytes(path, png.getvalue())
