"""The GLUE results record as a markdown table (printed and saved) and as results.json."""

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
