"""Throughput accounting (model FLOPs, MFU), the metrics.jsonl log and the loss-curve plot."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ufbert_jax.config import ModelConfig

log = logging.getLogger("ufbert_jax.train")

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"

# Dense bf16 peak FLOP/s per chip, by a substring of jax.Device.device_kind (vendor data sheets, without
# sparsity). Unknown kinds (CPUs included) have no MFU.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}


def train_flops_per_token(cfg: ModelConfig, seq_len: int, predictions: int) -> float:
    """Model FLOPs of one training token (forward + backward = 3x forward, matmuls only).

    Per layer and token: QKV and output projections 2 * 4H^2, attention scores and context 2 * 2SH, the
    feedforward 2 * 2HW, where W is ff_width for the dense model and K*N for the FFF: training runs the
    masked dense form (every node's logit and a dense output product), so it is counted as a dense FF of
    K*N neurons, not the K*(D+1) neurons that conditional inference touches. Plus the decoder 2HV on
    `predictions` of `seq_len` positions (sparse prediction). Embedding lookups, norms, softmax and GELU
    are not counted (the usual MFU convention).
    """
    hidden = cfg.hidden
    width = cfg.ff_width if cfg.feedforward == "dense" else cfg.fff_trees * cfg.fff_nodes
    per_layer = 8 * hidden * hidden + 4 * seq_len * hidden + 4 * hidden * width
    decoder = 2 * hidden * cfg.vocab_size * predictions / seq_len
    return 3.0 * (cfg.layers * per_layer + decoder)


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """Peak FLOP/s of one device for `dtype` compute, or None where unknown (then no MFU is reported)."""
    if dtype != "bfloat16":
        return None
    return next((peak for kind, peak in PEAK_BF16_FLOPS.items() if kind in device_kind), None)


class MetricsLog:
    """One log line per record and the same record appended to workdir/metrics.jsonl (process 0 only)."""

    def __init__(self, workdir: str | Path, enabled: bool = True):
        self.path = Path(workdir) / METRICS_FILE
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Drops records past `step`: after a resume they describe work that the restored state never saw."""
        if self.enabled and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        log.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]


def plot_losses(records: list[dict], path: str | Path) -> None:
    """Train (and eval, where logged) MLM loss against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
