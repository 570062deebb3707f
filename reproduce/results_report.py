"""docs/RESULTS.md's results from the sessions' records: the readings, the tables, the loss figure and a
small summary JSON.

Reproduces the part of docs/RESULTS.md between its RESULTS markers, docs/results/repro_mlm_loss.png and
docs/results/repro_summary.json from the records that reproduce/session.py brought back (one per session,
committed as docs/results/repro_NAME.json). Run from the repository root:

    python -m reproduce.results_report docs/results/repro_crammedbert-3072.json \
        docs/results/repro_ultrafastbert-1x11.json [docs/results/repro_ultrafastbert-1x11-steps.json]

Readings, each from the held-out MLM loss (the 3,200 rows no run trains on) interpolated linearly between
the evaluations of each run (every eval_every steps and at the end):
- equal wall clock: at 1/4, 1/2, 3/4 of the time budget both runs share, and at its end. The schedule is a
  function of the budget fraction, so these are also equal points of both schedules;
- equal tokens: at 1/4 ... 4/4 of the tokens the slower run saw. The faster run is read mid-schedule there
  (its learning rate not yet annealed), which is why a run with a step budget equal to the slower run's
  steps (`--config.budget_hours=0 --config.steps=N`, a record of its own) gives the end-of-schedule reading
  at equal tokens;
- equal wall clock through the side-by-side speed ratio: where a record holds the real-loop benchmark of
  both models on one machine (benchmarks/train_pipeline.py, `session.py --benchmark_seconds`), the tokens
  the other model would have seen in the dense run's time on that machine, and its loss there.
GLUE: per task the median over the fine-tuning seeds of the dev score (first metric: CoLA Matthews, MRPC F1,
STS-B Pearson, accuracy otherwise), the averages over the five tasks and over the four without CoLA (only
when every task has a score), each model over crammedBERT. A reading that does not exist (a run not made, a
job cut at the deadline) is written as such, never filled in.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import numpy as np

BEGIN, END = "<!-- RESULTS:BEGIN (reproduce/results_report.py) -->", "<!-- RESULTS:END -->"
OUR_TASKS = ("cola", "sst2", "mrpc", "stsb", "rte")  # the GLUE tasks whose data exist offline
TASK_TITLES = {"cola": "CoLA (MCC)", "sst2": "SST-2 (acc)", "mrpc": "MRPC (F1)", "stsb": "STS-B (Pearson)"}
TASK_TITLES["rte"] = "RTE (acc)"
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
NOT_RUN = "not run"
# Belcak & Wattenhofer 2023, GLUE dev (no CoLA reported); MNLI, QNLI and QQP are not in our data.
PAPER_ROWS = {
    "crammedBERT-3072 (paper, 1 day A6000)": dict(rte=58.8, mrpc=87.6, stsb=85.2, sst2=91.9, avg7=83.6),
    "UltraFastBERT-1x11-long (paper)": dict(rte=60.7, mrpc=87.5, stsb=86.4, sst2=89.9, avg7=83.0),
}
PAPER_BASELINE = "crammedBERT-3072 (paper, 1 day A6000)"


# ---- one run -----------------------------------------------------------------------------------------


def load_run(path: str | Path) -> dict:
    """A session record with its curves and summary (see `curves`, `summary`)."""
    run = json.loads(Path(path).read_text())
    run["path"] = str(path)
    run["curves"] = curves(run)
    run["summary"] = summary(run)
    run["glue_scores"] = glue_scores(run)
    return run


def curves(run: dict) -> dict[str, np.ndarray]:
    """Training and held-out loss against steps, tokens and wall-clock seconds (compilation included).

    An evaluation's time is the training time of its step (interpolated from the log records: the
    evaluation runs after that step's record)."""
    config, records = run["config"], run["train"]["records"]
    tokens_per_step = config["microbatch"] * config["seq_len"]
    train = [r for r in records if "train/loss" in r]
    evals = [r for r in records if "eval/loss" in r]
    steps = np.array([0] + [r["step"] for r in train], float)
    seconds = np.array([0.0] + [r["elapsed_s"] for r in train])
    eval_steps = np.array([r["step"] for r in evals], float)
    return {
        "train_steps": steps[1:],
        "train_tokens": steps[1:] * tokens_per_step,
        "train_seconds": seconds[1:],
        "train_loss": np.array([r["train/loss"] for r in train]),
        "eval_steps": eval_steps,
        "eval_tokens": eval_steps * tokens_per_step,
        "eval_seconds": np.interp(eval_steps, steps, seconds),
        "eval_loss": np.array([r["eval/loss"] for r in evals]),
        "eval_accuracy": np.array([r.get("eval/accuracy", np.nan) for r in evals]),
    }


def _card(run: dict) -> str:
    return run["machine"]["gpu"].split(",")[0].strip()


def summary(run: dict) -> dict:
    """Budget, tokens seen, epochs, updates, throughput and final losses of one run."""
    config, c = run["config"], run["curves"]
    train = [r for r in run["train"]["records"] if "train/loss" in r]
    time_budget = config["budget_hours"] > 0
    out = {
        "name": run["name"],
        "model": config["model"],
        "dense": config["model"].startswith("crammedbert") or config["model"] == "tiny-dense",
        "card": _card(run),
        "budget": f"{60 * config['budget_hours']:.3g} min" if time_budget else f"{config['steps']:,} steps",
        "budget_s": 3600 * config["budget_hours"] if time_budget else None,
        "stage": run["stage"],
        "finished": run["stage"] == "done" or run["train"]["exit_code"] == 0,
    }
    if not train:
        return {**out, "steps": 0, "tokens": 0}
    updates, previous = 0.0, 0  # each record's window of steps ran at (about) its logged effective batch
    for record in train:
        updates += (record["step"] - previous) * config["microbatch"] / record["batch"]
        previous = record["step"]
    tokens = int(c["train_tokens"][-1])
    train_tokens = run["data"]["train_rows"] * run["data"]["seq_len"]
    return {
        **out,
        "steps": int(c["train_steps"][-1]),
        "updates": round(updates),
        "tokens": tokens,
        "epochs": tokens / train_tokens,
        "train_s": float(c["train_seconds"][-1]),
        "tokens_per_s_median": float(np.median([r["tokens_per_s"] for r in train[1:] or train])),
        "tokens_per_s_run": tokens / float(c["train_seconds"][-1]),
        "final_train_loss": float(c["train_loss"][-1]),
        "final_eval_loss": float(c["eval_loss"][-1]) if len(c["eval_loss"]) else None,
        "final_eval_accuracy": float(c["eval_accuracy"][-1]) if len(c["eval_loss"]) else None,
        "final_eval_tokens": int(c["eval_tokens"][-1]) if len(c["eval_loss"]) else None,
    }


def loss_at(run: dict, axis: str, value: float) -> float | None:
    """The held-out loss at `value` of `axis` ("tokens" or "seconds"), linear between evaluations; None
    outside the evaluated range (with 0.5% slack at the ends: the last evaluation ends the budget)."""
    x, y = run["curves"][f"eval_{axis}"], run["curves"]["eval_loss"]
    if len(x) == 0 or not x[0] * 0.995 <= value <= x[-1] * 1.005:
        return None
    return float(np.interp(value, x, y))


def glue_scores(run: dict) -> dict:
    """Per task: every finished seed's dev score (first metric), their median, seeds planned; averages."""
    scores: dict[str, dict] = {}
    for task in OUR_TASKS:
        jobs = [j for j in run["glue"]["jobs"] if j["task"] == task]
        values = [
            next(iter(next(iter(j["dev"].values()))["metrics"].values())) for j in jobs if j["status"] == "ok"
        ]
        median = statistics.median(values) if values else None
        scores[task] = {
            "seeds": sorted(values),
            "median": median,
            "planned": run["glue"]["seeds"].get(task, 0),
            "statuses": sorted(j["status"] for j in jobs),
        }
    medians = {task: s["median"] for task, s in scores.items()}
    return {"tasks": scores, **averages(medians)}


def averages(scores: dict[str, float | None]) -> dict[str, float | None]:
    """avg5 over our five tasks and avg4 without CoLA; None unless every task of the average is there."""

    def mean(tasks):
        values = [scores.get(t) for t in tasks]
        return None if any(v is None for v in values) else float(np.mean(values))

    return {"avg5": mean(OUR_TASKS), "avg4": mean([t for t in OUR_TASKS if t != "cola"])}


# ---- readings across runs ----------------------------------------------------------------------------


def _evaluated(run: dict) -> bool:
    return run["summary"].get("final_eval_tokens") is not None


def time_runs(runs: list[dict]) -> list[dict]:
    """The runs with a wall-clock budget and at least one held-out evaluation."""
    return [r for r in runs if r["summary"]["budget_s"] and _evaluated(r)]


def baseline(runs: list[dict]) -> dict | None:
    """The dense time-budget run every ratio is taken against (None if it has no evaluation)."""
    return next((r for r in time_runs(runs) if r["summary"]["dense"]), None)


def equal_wall_clock(runs: list[dict]) -> dict:
    """Held-out loss of each time-budget run at fractions of the budget they share (seconds)."""
    timed = time_runs(runs)
    if not timed:
        return {"seconds": [], "loss": {}}
    budget = min(r["summary"]["budget_s"] for r in timed)
    seconds = [f * budget for f in FRACTIONS]
    loss = {}
    for run in timed:
        row = [loss_at(run, "seconds", s) for s in seconds[:-1]]
        ends_here = abs(run["summary"]["budget_s"] - budget) < 1
        row.append(run["summary"]["final_eval_loss"] if ends_here else loss_at(run, "seconds", budget))
        loss[run["name"]] = row
    return {"seconds": seconds, "loss": loss}


def equal_tokens(runs: list[dict]) -> dict:
    """Held-out loss of each time-budget run at fractions of the fewest tokens any of them saw."""
    timed = time_runs(runs)
    if not timed:
        return {"tokens": [], "loss": {}, "slowest": None}
    slowest = min(timed, key=lambda r: r["summary"]["tokens"])
    tokens = [f * slowest["summary"]["final_eval_tokens"] for f in FRACTIONS]
    return {
        "tokens": tokens,
        "slowest": slowest["name"],
        "loss": {run["name"]: [loss_at(run, "tokens", n) for n in tokens] for run in timed},
    }


def end_of_schedule(runs: list[dict]) -> list[dict]:
    """Each step-budget run beside the time-budget runs at its token count: all read at the end of their
    own schedule when the tokens match the other run's (within 1%)."""
    rows = []
    for run in runs:
        s = run["summary"]
        if s["budget_s"] or not _evaluated(run):
            continue
        others = []
        for other in time_runs(runs):
            o = other["summary"]
            same = abs(o["tokens"] - s["tokens"]) <= 0.01 * o["tokens"]
            loss = o["final_eval_loss"] if same else loss_at(other, "tokens", s["final_eval_tokens"])
            others.append({"name": other["name"], "loss": loss, "end_of_schedule": same})
        rows.append(
            {
                "name": run["name"],
                "tokens": s["final_eval_tokens"],
                "loss": s["final_eval_loss"],
                "others": others,
            }
        )
    return rows


def speed_ratio(runs: list[dict]) -> dict | None:
    """The real-loop tokens/s of both models measured side by side on one machine (the first record that
    holds a benchmark), the sessions' own ratio, and the other model's loss at the tokens it would have
    seen in the dense run's time at the side-by-side ratio."""
    bench = next((r["benchmark"] for r in runs if r.get("benchmark")), None)
    base = baseline(runs)
    if bench is None or base is None:
        return None
    rate = {row["model"]: row["real"]["tokens_per_s"] for row in bench["rows"]}
    dense_rate = rate.get(base["config"]["model"])
    out = {"device": bench.get("device"), "seconds": bench.get("seconds"), "tokens_per_s": rate, "runs": {}}
    for run in time_runs(runs):
        if run is base or dense_rate is None or run["config"]["model"] not in rate:
            continue
        ratio = rate[run["config"]["model"]] / dense_rate
        tokens = ratio * base["summary"]["final_eval_tokens"]
        out["runs"][run["name"]] = {
            "side_by_side": ratio,
            "sessions": run["summary"]["tokens_per_s_median"] / base["summary"]["tokens_per_s_median"],
            "tokens_in_dense_time": tokens,
            "loss": loss_at(run, "tokens", tokens),
        }
    return out


def glue_ratios(runs: list[dict]) -> dict[str, dict[str, float | None]]:
    base = baseline(runs)
    if base is None:
        return {}
    b = base["glue_scores"]
    keys = [*OUR_TASKS, "avg5", "avg4"]
    ratios = {}
    for run in runs:
        if run is not base:
            a = run["glue_scores"]
            ratios[run["name"]] = {k: _ratio(_score(a, k), _score(b, k)) for k in keys}
    return ratios


def _score(scores: dict, key: str) -> float | None:
    return scores["tasks"][key]["median"] if key in scores["tasks"] else scores[key]


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


# ---- tables ------------------------------------------------------------------------------------------


def _cell(value: float | None, digits: int = 3, missing: str = NOT_RUN) -> str:
    return missing if value is None else f"{value:.{digits}f}"


def _tokens(count: float) -> str:
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e3:.1f}k"


def runs_table(runs: list[dict]) -> list[str]:
    lines = [
        "| run | card | budget | train s | microbatch steps | optimizer updates (≈) | tokens seen | epochs | "
        "tokens/s (median) | tokens/s (whole run) | final train loss | final held-out loss | held-out acc. |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        s = run["summary"]
        if not s["steps"]:
            lines.append(
                f"| {s['name']} | {s['card']} | {s['budget']} | {s['stage']}: no step logged |" + " |" * 9
            )
            continue
        accuracy = s["final_eval_accuracy"]
        lines.append(
            f"| {s['name']} | {s['card']} | {s['budget']} | {s['train_s']:.0f} | {s['steps']:,} | "
            f"{s['updates']:,} | {_tokens(s['tokens'])} | {s['epochs']:.2f} | "
            f"{s['tokens_per_s_median']:,.0f} | {s['tokens_per_s_run']:,.0f} | {s['final_train_loss']:.3f} | "
            f"{_cell(s['final_eval_loss'])} | {_cell(None if accuracy is None else 100 * accuracy, 1)}% |"
        )
    return lines


def _reading_table(title: str, columns: list[str], rows: dict[str, list], names: list[str]) -> list[str]:
    lines = [f"| {title} | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name in names:
        lines.append(
            f"| {name} | " + " | ".join(_cell(v, missing="n/a (outside the run)") for v in rows[name]) + " |"
        )
    return lines


def readings_block(runs: list[dict], readings: dict) -> list[str]:
    wall, tokens = readings["equal_wall_clock"], readings["equal_tokens"]
    names = list(wall["loss"])
    lines = [
        "Held-out MLM loss at equal wall clock (seconds of the shared budget, compilation included):",
        "",
    ]
    if names:
        columns = [
            f"{s:.0f} s" + (" (end)" if i == len(FRACTIONS) - 1 else "")
            for i, s in enumerate(wall["seconds"])
        ]
        lines += _reading_table("run", columns, wall["loss"], names)
    else:
        lines.append(f"({NOT_RUN}: no time-budget run with a logged step)")
    lines += [
        "",
        f"Held-out MLM loss at equal tokens (fractions of the tokens {tokens['slowest']} saw; "
        "a faster run is read mid-schedule there):",
        "",
    ]
    if names:
        columns = [_tokens(n) for n in tokens["tokens"]]
        lines += _reading_table("run", columns, tokens["loss"], names)
    else:
        lines.append(f"({NOT_RUN})")
    lines += [
        "",
        "Equal tokens at the end of each run's own schedule (a step-budget run beside the time runs):",
        "",
    ]
    if readings["end_of_schedule"]:
        lines += [
            "| step-budget run | tokens | its final held-out loss | time-budget runs at those tokens |",
            "|---|---|---|---|",
        ]
        for row in readings["end_of_schedule"]:
            others = "; ".join(
                f"{o['name']} {_cell(o['loss'], missing='n/a')}"
                + (" (its end)" if o["end_of_schedule"] else " (mid-schedule)")
                for o in row["others"]
            )
            lines.append(f"| {row['name']} | {_tokens(row['tokens'])} | {_cell(row['loss'])} | {others} |")
    else:
        lines.append(
            f"({NOT_RUN}: the faster model's run with `--config.budget_hours=0 --config.steps=N`, N the "
            "slower run's microbatch steps; docs/RESULTS.md, session 3)"
        )
    speed = readings["speed_ratio"]
    lines += [
        "",
        "Equal wall clock through the real-loop speed ratio measured side by side on one machine:",
        "",
    ]
    if speed and speed["runs"]:
        lines += [
            "| run | tokens/s ratio side by side | ratio of the sessions | tokens in the dense run's time | "
            "held-out loss there |",
            "|---|---|---|---|---|",
        ]
        for name, row in speed["runs"].items():
            lines.append(
                f"| {name} | {row['side_by_side']:.3f} ({speed['device']}, {speed['seconds']:g} s each) | "
                f"{row['sessions']:.3f} | {_tokens(row['tokens_in_dense_time'])} | "
                f"{_cell(row['loss'], missing='n/a (beyond the run)')} |"
            )
    else:
        lines.append(f"({NOT_RUN}: `python3 -m reproduce.session start ... --benchmark_seconds 60`)")
    return lines


def glue_table(runs: list[dict]) -> list[str]:
    lines = [
        "| run | "
        + " | ".join(TASK_TITLES[t] for t in OUR_TASKS)
        + " | avg (5) | avg w/o CoLA (4) | paper avg w/o "
        "CoLA over 7 (with MNLI, QNLI, QQP) |",
        "|---|" + "---|" * (len(OUR_TASKS) + 3),
    ]
    for run in runs:
        g = run["glue_scores"]
        cells = []
        for task in OUR_TASKS:
            t = g["tasks"][task]
            if t["median"] is None:
                cells.append(f"{NOT_RUN}" if not t["statuses"] else "/".join(t["statuses"]))
            else:
                seeds = ", ".join(f"{v:.1f}" for v in t["seeds"])
                short = (
                    "" if len(t["seeds"]) >= t["planned"] else f"; {len(t['seeds'])} of {t['planned']} seeds"
                )
                cells.append(f"**{t['median']:.1f}** ({seeds}{short})")
        lines.append(
            f"| {run['name']} (ours) | "
            + " | ".join(cells)
            + f" | {_cell(g['avg5'], 1, 'n/a')} | {_cell(g['avg4'], 1, 'n/a')} | |"
        )
    for name, row in PAPER_ROWS.items():
        cells = " | ".join(_cell(row.get(t), 1, "-") for t in OUR_TASKS)
        lines.append(f"| {name} | {cells} | - | {_cell(averages(row)['avg4'], 1, '-')} | {row['avg7']} |")
    return lines


def ratio_table(runs: list[dict], ratios: dict) -> list[str]:
    base = baseline(runs)
    keys = [*OUR_TASKS, "avg5", "avg4"]
    lines = [
        "| over crammedBERT | "
        + " | ".join(TASK_TITLES.get(k, k) for k in OUR_TASKS)
        + " | avg (5) | avg w/o CoLA (4) |",
        "|---|" + "---|" * len(keys),
    ]
    for name, row in ratios.items():
        lines.append(
            f"| {name} / {base['name']} (ours) | " + " | ".join(_cell(row[k], 3, "n/a") for k in keys) + " |"
        )
    paper = {name: {**row, **averages(row)} for name, row in PAPER_ROWS.items()}
    for name, row in paper.items():
        if name != PAPER_BASELINE:
            cells = " | ".join(_cell(_ratio(row.get(k), paper[PAPER_BASELINE].get(k)), 3, "-") for k in keys)
            lines.append(f"| paper: {name} / {PAPER_BASELINE} | {cells} |")
    return lines


def provenance(runs: list[dict]) -> list[str]:
    lines = []
    for run in runs:
        flags = " ".join(run["train_flags"])
        stages = ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in run["stages"].items())
        versions = ", ".join(
            f"{k} {v}" for k, v in run["machine"]["versions"].items() if k in ("jax", "flax")
        )
        lines.append(
            f"- `{run['name']}` ({run['path']}): {run['machine']['gpu']}, {run['machine']['cpus']} cores; "
            f"{versions}; commit {run['commit'] or 'not given'}; stages: {stages}; GLUE "
            f"{run['glue']['parallel']} side by side; `python3 -m reproduce.session start {run['model']}"
            + (f" --name {run['name']}" if run["name"] != run["model"] else "")
            + (f" -- {flags}`" if flags else "`")
        )
    cards = {run["summary"]["card"] for run in runs}
    if len(cards) > 1:
        lines.append(f"- **The runs used different cards ({', '.join(sorted(cards))}): compare with care.**")
    return lines


# ---- figure, document, summary -----------------------------------------------------------------------


def plot(runs: list[dict], readings: dict, path: Path) -> None:
    """Held-out (markers) and training (faint) MLM loss of every run against wall clock and tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for index, run in enumerate(runs):
        c, color = run["curves"], f"C{index}"
        for ax, axis, scale in ((axes[0], "seconds", 1.0), (axes[1], "tokens", 1e-6)):
            ax.plot(c[f"train_{axis}"] * scale, c["train_loss"], color=color, alpha=0.25, lw=0.8)
            ax.plot(
                c[f"eval_{axis}"] * scale, c["eval_loss"], "o-", ms=3, color=color, label=f"{run['name']}"
            )
    wall, tokens = readings["equal_wall_clock"], readings["equal_tokens"]
    if wall["seconds"]:
        axes[0].axvline(wall["seconds"][-1], color="gray", ls=":", lw=1)
        axes[1].axvline(tokens["tokens"][-1] * 1e-6, color="gray", ls=":", lw=1)
    axes[0].set_xlabel("training wall clock, s (compilation and evaluations included)")
    axes[1].set_xlabel("tokens seen (M)")
    axes[0].set_ylabel("MLM loss (masked positions)")
    held_out = np.concatenate([run["curves"]["eval_loss"] for run in runs])
    if held_out.size:  # the first training records (loss ~ln V) would squash the curves
        axes[0].set_ylim(held_out.min() - 0.05 * np.ptp(held_out) - 0.01, held_out.max() * 1.05)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    cards = ", ".join(sorted({run["summary"]["card"] for run in runs}))
    fig.suptitle(
        f"Held-out (markers) and training (faint) MLM loss against wall clock and tokens seen; {cards}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def results_block(runs: list[dict], readings: dict, plot_path: Path, doc: Path) -> str:
    relative = Path(os.path.relpath(plot_path, doc.parent)).as_posix()
    return "\n".join(
        [
            BEGIN,
            "",
            "Pretraining (epochs: tokens seen over the tokens of the training rows):",
            "",
            *runs_table(runs),
            "",
            *readings_block(runs, readings),
            "",
            f"![held-out MLM loss against wall clock and tokens]({relative})",
            "",
            "GLUE dev, median over the fine-tuning seeds (each seed's score in brackets; percent, CoLA "
            "Matthews and STS-B Pearson x 100):",
            "",
            *glue_table(runs),
            "",
            "Over crammedBERT (medians and averages of each model over those of crammedBERT-3072):",
            "",
            *ratio_table(runs, readings["glue_ratios"]),
            "",
            "Runs:",
            "",
            *provenance(runs),
            "",
            END,
        ]
    )


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return None if not np.isfinite(value) else round(float(value), 5)
    return value


def readings_of(runs: list[dict]) -> dict:
    return {
        "equal_wall_clock": equal_wall_clock(runs),
        "equal_tokens": equal_tokens(runs),
        "end_of_schedule": end_of_schedule(runs),
        "speed_ratio": speed_ratio(runs),
        "glue_ratios": glue_ratios(runs),
    }


def write_report(paths: list[Path], doc: Path, plot_path: Path, summary_path: Path) -> dict:
    runs = [load_run(path) for path in paths]
    if baseline(runs) is None:
        raise ValueError(f"no dense time-budget run with a logged step among {[str(p) for p in paths]}")
    readings = readings_of(runs)
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{doc} lacks the markers {BEGIN!r} ... {END!r} around the generated part")
    head, rest = text.split(BEGIN, 1)
    doc.write_text(head + results_block(runs, readings, plot_path, doc) + rest.split(END, 1)[1])
    plot(runs, readings, plot_path)
    result = {
        "runs": {run["name"]: run["summary"] for run in runs},
        "glue": {run["name"]: run["glue_scores"] for run in runs},
        **readings,
        "records": [run["path"] for run in runs],
    }
    summary_path.write_text(json.dumps(_jsonable(result), indent=1) + "\n")
    print(f"wrote {doc}, {plot_path} and {summary_path} from {len(runs)} records")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "records", nargs="+", type=Path, help="repro_NAME.json records of reproduce/session.py"
    )
    parser.add_argument("--doc", type=Path, default=Path("docs/RESULTS.md"))
    parser.add_argument("--plot", type=Path, default=Path("docs/results/repro_mlm_loss.png"))
    parser.add_argument("--summary", type=Path, default=Path("docs/results/repro_summary.json"))
    args = parser.parse_args(argv)
    write_report(args.records, args.doc, args.plot, args.summary)


if __name__ == "__main__":
    main()
