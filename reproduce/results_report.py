"""The H200 reproduction's results: run records on the device, then docs/RESULTS.md's tables and loss plot.

Reproduces docs/RESULTS.md's results (between its RESULTS markers) and docs/results/h200_mlm_loss.png from
the run folders. Run from the repository root, as a module (run-info loads a config file, whose
`from configs import ...` needs the root on the path):

    python -m reproduce.results_report report docs/results/h200_* --doc docs/RESULTS.md \
        --plot docs/results/h200_mlm_loss.png

`report` reads each run folder that reproduce/reproduce_h200.sh brought back (run.json, metrics.jsonl,
results.json), rewrites the part of --doc between the RESULTS markers (pretraining table, GLUE table beside
the paper's rows, the UltraFastBERT / crammedBERT ratios) and draws every run's MLM loss curves, training
and held-out, against wall-clock seconds and tokens seen into one PNG. On the device the script makes those
records: `run-info` (the resolved train config, the shard manifest's row count, the stage times) and
`merge-glue` (the per-task results.json of eval_glue.py as one, with the averages).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
from absl import flags
from ml_collections import config_flags

from ufbert_jax.config import preset
from ufbert_jax.data.shards import MANIFEST_FILE
from ufbert_jax.glue import report, scoring
from ufbert_jax.glue.tasks import get_task

BEGIN, END = "<!-- RESULTS:BEGIN (reproduce/results_report.py) -->", "<!-- RESULTS:END -->"
OUR_TASKS = ("cola", "sst2", "mrpc", "stsb", "rte")  # the GLUE tasks whose data exist offline
SHOWN_METRIC = {"cola": "MCC", "sst2": "acc", "mrpc": "F1", "stsb": "Pearson", "rte": "acc"}
# Belcak & Wattenhofer 2023, GLUE dev (no CoLA reported); MNLI, QNLI and QQP are not in our data.
PAPER_ROWS = {
    "crammedBERT-3072 (paper, 1 day A6000)": dict(
        rte=58.8, mrpc=87.6, stsb=85.2, sst2=91.9, mnli=82.8, qnli=90.4, qqp=89.0, avg7=83.6
    ),
    "UltraFastBERT-1x11-long (paper)": dict(
        rte=60.7, mrpc=87.5, stsb=86.4, sst2=89.9, mnli=81.3, qnli=89.7, qqp=87.6, avg7=83.0
    ),
}
PAPER_BASELINE = "crammedBERT-3072 (paper, 1 day A6000)"


# ---- on the device -----------------------------------------------------------------------------------


def merge_glue(paths: list[Path], tasks: list[str]) -> dict:
    """One GLUE record from per-task results.json files; a task in `tasks` without a file is skipped."""
    merged: dict = {"tasks": {}}
    for path in paths:
        record = json.loads(path.read_text())
        merged.update(workdir=record["workdir"], model=record["model"], source=record["source"])
        merged["tasks"].update(record["tasks"])
    for task in tasks:
        merged["tasks"].setdefault(
            task, {"status": "skipped", "reason": "no results.json: failed or cut at the deadline (glue.log)"}
        )
    records = merged["tasks"].values()
    rows = {row: scored["metrics"] for record in records for row, scored in record.get("dev", {}).items()}
    row_tasks = {row: name for name, record in merged["tasks"].items() for row in record.get("dev", {})}
    merged["averages"] = scoring.averages(rows, row_tasks)
    return merged


def resolved_train_config(train_flags: list[str]) -> dict:
    """The train config that `train.py train_flags...` runs (train.py's --config file and overrides)."""
    config_flags.DEFINE_config_file("config", None, "train config file", lock_config=True)
    flags.FLAGS(["train.py", *train_flags])
    return json.loads(flags.FLAGS.config.to_json())


def run_info(name: str, device: str, seconds: str, train_flags: list[str]) -> dict:
    config = resolved_train_config(train_flags)
    manifest = Path(config["data"]["shard_dir"]) / MANIFEST_FILE
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None  # the device's copy of the working tree may have no .git
    return {
        "name": name,
        "device": device,
        "seconds": {k: int(v) for k, v in (part.split("=") for part in seconds.split(","))},
        "train_flags": train_flags,
        "config": config,
        "shard_rows": json.loads(manifest.read_text())["rows"] if manifest.is_file() else None,
        "versions": {pkg: metadata.version(pkg) for pkg in ("jax", "flax", "optax")},
        "commit": commit,
    }


# ---- the report ----------------------------------------------------------------------------------------


def load_run(folder: Path) -> dict:
    """run.json, the metrics.jsonl records and results.json (None if absent) of one run folder."""
    run = json.loads((folder / "run.json").read_text())
    run["records"] = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    glue_path = folder / "results.json"
    run["glue"] = json.loads(glue_path.read_text()) if glue_path.is_file() else None
    run["folder"] = folder
    return run


def pretraining_summary(run: dict) -> dict:
    """Tokens seen, epochs, approximate optimizer updates, throughput and final losses of one run."""
    config = run["config"]
    train = [r for r in run["records"] if "train/loss" in r]
    evals = [r for r in run["records"] if "eval/loss" in r]
    tokens_per_step = config["microbatch"] * config["seq_len"]
    steps = train[-1]["step"]
    held_out = config["eval_batches"] * config["microbatch"] if config["eval_every"] else 0
    train_rows = run["shard_rows"] - held_out if run["shard_rows"] else None
    # Each record's window of steps ran at (about) its logged effective batch.
    updates, previous = 0.0, 0
    for record in train:
        updates += (record["step"] - previous) * config["microbatch"] / record["batch"]
        previous = record["step"]
    return {
        "model": config["model"],
        "dense": preset(config["model"], **config["model_overrides"]).feedforward == "dense",
        "steps": steps,
        "updates": round(updates),
        "tokens": steps * tokens_per_step,
        "epochs": steps * config["microbatch"] / train_rows if train_rows else None,
        "train_s": train[-1]["elapsed_s"],
        "tokens_per_s": float(np.median([r["tokens_per_s"] for r in train[1:] or train])),
        "train_loss": train[-1]["train/loss"],
        "eval_loss": evals[-1]["eval/loss"] if evals else None,
        "eval_accuracy": evals[-1]["eval/accuracy"] if evals else None,
        "final_batch": config["final_batch"],
    }


def glue_scores(glue: dict | None) -> dict[str, float | None]:
    """Task -> its first (averaged) metric in percent, None where missing; plus avg5 and avg4 (no CoLA)."""
    scores: dict[str, float | None] = {task: None for task in OUR_TASKS}
    for task, record in (glue or {}).get("tasks", {}).items():
        if record.get("status") == "ok":
            (dev,) = record["dev"].values()
            scores[task] = next(iter(dev["metrics"].values()))
    return {**scores, **averages(scores)}


def averages(scores: dict[str, float | None]) -> dict[str, float | None]:
    """avg5 over our five tasks and avg4 without CoLA; None unless every task of the average is there."""

    def mean(tasks):
        values = [scores.get(t) for t in tasks]
        return None if any(v is None for v in values) else float(np.mean(values))

    return {"avg5": mean(OUR_TASKS), "avg4": mean([t for t in OUR_TASKS if t != "cola"])}


def _cell(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.3f}"


def pretraining_table(runs: list[dict]) -> list[str]:
    lines = [
        "| run | model | train s | microbatch steps | optimizer updates (≈) | final batch | tokens seen | "
        "epochs of the shards | tokens/s (median) | final train loss | final held-out loss | "
        "held-out MLM acc. |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        s = run["summary"]
        lines.append(
            f"| {run['name']} | {s['model']} | {s['train_s']:.0f} | {s['steps']:,} | {s['updates']:,} | "
            f"{s['final_batch']} | {s['tokens'] / 1e6:.1f}M | {_cell(s['epochs'], 2)} | "
            f"{s['tokens_per_s']:,.0f} | {s['train_loss']:.3f} | {_cell(s['eval_loss'], 3)} | "
            f"{_cell(None if s['eval_accuracy'] is None else 100 * s['eval_accuracy'])}% |"
        )
    return lines


def glue_table(runs: list[dict]) -> list[str]:
    header = [f"{get_task(t).directory} ({SHOWN_METRIC[t]})" for t in OUR_TASKS]
    lines = [
        "| run | " + " | ".join(header) + " | avg (5) | avg w/o CoLA (4) | paper: MNLI, QNLI, QQP; "
        "avg w/o CoLA (7) |",
        "|---|" + "---|" * (len(OUR_TASKS) + 3),
    ]
    for run in runs:
        s = run["scores"]
        cells = " | ".join(_cell(s[t]) for t in OUR_TASKS)
        lines.append(f"| {run['name']} (ours) | {cells} | {_cell(s['avg5'])} | {_cell(s['avg4'])} | |")
    for name, row in PAPER_ROWS.items():
        cells = " | ".join(_cell(row.get(t)) for t in OUR_TASKS)
        extra = f"{row['mnli']}, {row['qnli']}, {row['qqp']}; {row['avg7']}"
        lines.append(f"| {name} | {cells} | - | {_cell(averages(row)['avg4'])} | {extra} |")
    return lines


def ratio_table(runs: list[dict]) -> list[str]:
    """Each FFF run over the (first) dense run, and the paper's UltraFastBERT over its crammedBERT."""
    lines = [
        "| ratio | "
        + " | ".join(get_task(t).directory for t in OUR_TASKS)
        + " | avg (5) | avg w/o CoLA (4) |",
        "|---|" + "---|" * (len(OUR_TASKS) + 2),
    ]
    dense = [run for run in runs if run["summary"]["dense"]]
    for run in runs:
        if dense and run is not dense[0]:
            a, b = run["scores"], dense[0]["scores"]
            cells = " | ".join(_ratio(a[k], b[k]) for k in (*OUR_TASKS, "avg5", "avg4"))
            lines.append(f"| {run['name']} / {dense[0]['name']} (ours) | {cells} |")
    paper = {name: {**row, **averages(row)} for name, row in PAPER_ROWS.items()}
    for name, row in paper.items():
        if name != PAPER_BASELINE:
            base = paper[PAPER_BASELINE]
            cells = " | ".join(_ratio(row.get(k), base.get(k)) for k in (*OUR_TASKS, "avg5", "avg4"))
            lines.append(f"| paper: UltraFastBERT-1x11-long / crammedBERT-3072 | {cells} |")
    return lines


def runs_list(runs: list[dict]) -> list[str]:
    lines = []
    for run in runs:
        seconds = ", ".join(f"{k} {v} s" for k, v in run["seconds"].items())
        flags_text = " ".join(run["train_flags"])
        lines.append(
            f"- `{run['name']}` ({run['folder']}): {run['device']}; {seconds}; jax "
            f"{run['versions']['jax']}; commit {run['commit'] or 'unknown'}; `{flags_text}`"
        )
    return lines


def plot(runs: list[dict], path: Path) -> None:
    """Training (lines) and held-out (markers) MLM loss of every run against seconds and tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for index, run in enumerate(runs):
        color = f"C{index}"
        train = [r for r in run["records"] if "train/loss" in r]
        evals = [r for r in run["records"] if "eval/loss" in r]
        steps = np.array([r["step"] for r in train])
        seconds = np.array([r["elapsed_s"] for r in train])
        tokens_per_step = run["config"]["microbatch"] * run["config"]["seq_len"]
        loss = [r["train/loss"] for r in train]
        eval_steps = np.array([r["step"] for r in evals])
        eval_loss = [r["eval/loss"] for r in evals]
        for ax, x, x_eval in (
            (axes[0], seconds, np.interp(eval_steps, steps, seconds)),
            (axes[1], steps * tokens_per_step / 1e6, eval_steps * tokens_per_step / 1e6),
        ):
            ax.plot(x, loss, color=color, alpha=0.8, label=f"{run['name']} train")
            if evals:
                ax.plot(x_eval, eval_loss, "o--", color=color, label=f"{run['name']} held-out")
    axes[0].set_xlabel("training wall clock (s, compilation included)")
    axes[1].set_xlabel("tokens seen (M)")
    axes[0].set_ylabel("MLM loss (masked positions)")
    for ax in axes:
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def results_block(runs: list[dict], plot_path: Path, doc: Path) -> str:
    relative = Path(os.path.relpath(plot_path, doc.parent))
    lines = [
        BEGIN,
        "",
        "Pretraining (one H200 each, equal wall clock):",
        "",
        *pretraining_table(runs),
        "",
        "GLUE dev (last epoch, percent; CoLA Matthews x 100, STS-B Pearson x 100):",
        "",
        *glue_table(runs),
        "",
        "UltraFastBERT / crammedBERT:",
        "",
        *ratio_table(runs),
        "",
        f"![MLM loss of every run]({relative.as_posix()})",
        "",
        "Runs:",
        "",
        *runs_list(runs),
        "",
        END,
    ]
    return "\n".join(lines)


def write_report(folders: list[Path], doc: Path, plot_path: Path) -> None:
    runs = [load_run(folder) for folder in folders]
    for run in runs:
        run["summary"] = pretraining_summary(run)
        run["scores"] = glue_scores(run["glue"])
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{doc} lacks the markers {BEGIN!r} ... {END!r} around the generated part")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    doc.write_text(head + results_block(runs, plot_path, doc) + tail)
    plot(runs, plot_path)
    print(f"wrote {doc} ({len(runs)} runs) and {plot_path}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    train_flags = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    rep = commands.add_parser("report", help="docs/RESULTS.md tables and the loss plot from run folders")
    rep.add_argument("runs", nargs="+", type=Path, help="folders with run.json, metrics.jsonl, results.json")
    rep.add_argument("--doc", type=Path, default=Path("docs/RESULTS.md"))
    rep.add_argument("--plot", type=Path, default=Path("docs/results/h200_mlm_loss.png"))
    merge = commands.add_parser("merge-glue", help="per-task eval_glue.py results.json files as one")
    merge.add_argument("results", nargs="*", type=Path)
    merge.add_argument("--tasks", default=",".join(OUR_TASKS), help="tasks expected (missing: skipped)")
    merge.add_argument("--out", type=Path, required=True)
    info = commands.add_parser("run-info", help="run.json: the resolved train config (flags after --)")
    info.add_argument("--out", type=Path, required=True)
    info.add_argument("--name", required=True)
    info.add_argument("--device", default="")
    info.add_argument("--seconds", default="", help="stage=seconds,... (the script's stage times)")
    args = parser.parse_args(argv)

    if args.command == "report":
        write_report(args.runs, args.doc, args.plot)
    elif args.command == "merge-glue":
        merged = merge_glue(args.results, [t for t in args.tasks.split(",") if t])
        args.out.write_text(json.dumps(merged, indent=2) + "\n")
        print(report.markdown(merged), end="")
    else:
        args.out.write_text(json.dumps(run_info(args.name, args.device, args.seconds, train_flags), indent=2))


if __name__ == "__main__":
    main()
