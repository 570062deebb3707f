"""The GLUE results record as a markdown table (printed and saved) and as results.json.

An --out folder collects the results of several runs on one workdir checkpoint: `earlier_tasks` gives the
records a new run keeps beside its own, and refuses a results.json of another workdir, model or step.
"""

from __future__ import annotations

import json
from pathlib import Path

from ufbert_jax import io

AVERAGE_TITLES = {
    "cramming": "cramming average (first metric per row, MNLI m and mm both counted, no WNLI)",
    "cramming_without_cola": "cramming average without CoLA (the paper's table)",
    "glue": "GLUE score (mean over tasks of each task's mean metric, MNLI m/mm averaged)",
}


def _rows(results: dict) -> list[str]:
    lines = []
    for task, record in results["tasks"].items():
        if record["status"] == "skipped":
            lines.append(f"| {task} | - | - | skipped: {record['reason']} | - |")
            continue
        if record["status"] == "failed":
            lines.append(f"| {task} | - | - | FAILED: {record['error']} | - |")
            continue
        for split, scored in record["dev"].items():
            values = scored["metrics"]
            shown = ", ".join(f"{name} {value:.1f}" for name, value in values.items())
            score = next(iter(values.values()))
            lines.append(f"| {task} | {split} | {scored['examples']} | {shown} | {score:.1f} |")
    return lines


def markdown(results: dict) -> str:
    """Per-row table (all values are percentages) and the averages with the rows each one covers."""
    lines = [
        "| task | dev split | examples | metrics | score |",
        "|---|---|---|---|---|",
        *_rows(results),
        "",
    ]
    for key, title in AVERAGE_TITLES.items():
        average = results["averages"][key]
        value = "n/a" if average["value"] is None else f"{average['value']:.1f}"
        lines.append(
            f"- {title}: **{value}** over {len(average['rows'])} rows ({', '.join(average['rows'])})"
        )
    return "\n".join(lines) + "\n"


def write(results: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Writes results.json and results.md into `out_dir`, each atomically (a kill mid-write leaves the
    previous version); returns their paths."""
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    io.write_text(json_path, json.dumps(results, indent=2) + "\n")
    io.write_text(md_path, f"# GLUE dev results for {results['workdir']}\n\n{markdown(results)}")
    return json_path, md_path


def earlier_tasks(out_dir: str | Path, workdir: str | Path, model: dict, step: int | None) -> dict:
    """The task records of out_dir/results.json that a run of `workdir` (its `model` and checkpoint `step`)
    keeps beside its own: every earlier result or skip; an earlier failure is dropped (the run that had it
    reported it, and a task reruns by being named again). {} without a results.json.

    A ValueError naming the file when it holds the results of another workdir, another model or another
    checkpoint step (a table must not average them); a damaged file is an io.FileFormatError.
    """
    path = Path(out_dir) / "results.json"
    if not path.is_file():
        return {}
    earlier = io.read_json(path)
    if not isinstance(earlier, dict) or not isinstance(earlier.get("tasks"), dict):
        raise io.FileFormatError(f"{path}: not a GLUE results record (no 'tasks' object)")
    where = f"pass another --out or move {path} away"
    recorded = earlier.get("workdir")
    if not isinstance(recorded, str) or Path(recorded).resolve() != Path(workdir).resolve():
        raise ValueError(
            f"{path} holds the results of another workdir ({recorded!r}, not {str(workdir)!r}): {where}"
        )
    if earlier.get("model") != json.loads(json.dumps(model)):
        raise ValueError(f"{path} holds the results of another model than {workdir}'s model.json: {where}")
    steps = sorted({r["checkpoint_step"] for r in earlier["tasks"].values() if "checkpoint_step" in r})
    if steps and steps != [step]:
        raise ValueError(
            f"{path} holds the results of checkpoint step {steps}, this run evaluates {step}: {where}"
        )
    return {task: record for task, record in earlier["tasks"].items() if record.get("status") != "failed"}
