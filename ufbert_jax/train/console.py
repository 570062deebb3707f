"""What a pretraining run prints when it ends: its closing summary, or that it had already finished.

    runs/demo: finished
      trained        150 steps (614,400 tokens) in 53.7s, 11,435 tokens/s
      train loss     6.193 (mean of steps 141-150)
      held-out loss  6.418 (step 150)
      checkpoint     runs/demo/checkpoints/150
      metrics        runs/demo/metrics.jsonl
      loss curve     runs/demo/loss.png

Everything comes from the workdir (metrics.jsonl, the checkpoint folders), so the same summary describes a
run that finished in an earlier invocation. loop.train_and_evaluate prints it on process 0.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from ufbert_jax import workdir as workdir_lib
from ufbert_jax.train.metrics import METRICS_FILE, MetricsLog
from ufbert_jax.train.plot import PLOT_FILE


def latest_step(workdir: str | Path) -> int | None:
    """The newest checkpoint step folder of `workdir` (None without one); reads only the folder names."""
    folder = Path(workdir) / workdir_lib.CHECKPOINT_DIR
    steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
    return max(steps, default=None)


def duration(seconds: float) -> str:
    """1h02m03s, 2m05s or 12.3s."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def summary(config: ml_collections.ConfigDict, workdir: str | Path, already_finished: bool = False) -> str:
    """The closing lines of a run: steps, tokens, wall time, tokens/s, the last train and held-out losses,
    and where the checkpoint, metrics.jsonl and loss.png are. `already_finished`: this invocation trained
    nothing because the budget was spent before it began (a rerun of a finished run)."""
    workdir = Path(workdir)
    records = MetricsLog(workdir).records()
    train = [r for r in records if "train/loss" in r]
    evals = [r for r in records if "eval/loss" in r]
    step = latest_step(workdir)
    lines = []
    if train:
        last, seconds = train[-1], float(train[-1].get("elapsed_s", 0.0))
        tokens = last["step"] * config.microbatch * config.seq_len
        rate = f", {tokens / seconds:,.0f} tokens/s" if seconds > 0 else ""
        lines.append(
            f"  trained        {last['step']} steps ({tokens:,} tokens) in {duration(seconds)}{rate}"
        )
        first = train[-2]["step"] + 1 if len(train) > 1 else 1
        window = f"step {last['step']}" if first == last["step"] else f"steps {first}-{last['step']}"
        lines.append(f"  train loss     {last['train/loss']:.4g} (mean of {window})")
    if evals:
        lines.append(f"  held-out loss  {evals[-1]['eval/loss']:.4g} (step {evals[-1]['step']})")
    else:
        lines.append("  held-out loss  not evaluated (eval_every is 0, or no evaluation was due yet)")
    checkpoint = workdir / workdir_lib.CHECKPOINT_DIR / str(step) if step is not None else "none saved"
    lines.append(f"  checkpoint     {checkpoint}")
    lines.append(f"  metrics        {workdir / METRICS_FILE}")
    lines.append(f"  loss curve     {workdir / PLOT_FILE}")
    if already_finished:
        head = (
            f"{workdir}: this run had already finished, nothing left to train (to train on, raise "
            "--config.steps or --config.budget_hours and rerun; a new run needs another --workdir). Results:"
        )
    else:
        head = f"{workdir}: finished"
    return "\n".join([head, *lines])
