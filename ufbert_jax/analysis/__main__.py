"""Routing analysis of a workdir's FFF layers on a text file (docs/research.md).

    python -m ufbert_jax.analysis --workdir runs/demo --text data/sample/austen_emma.txt \
        [--max_tokens N] --out docs/research_example [--config.eps=0.01 --config.batch_size=16 ...]

Writes OUT/routing.json (exact counts and summaries) and OUT/{routing_heatmap,entropy,margins}.png, and
prints a per-layer table. This module is only the flag layer (absl flags and an ml_collections config
whose fields, ufbert_jax.analysis.routing_report.default_config, are --config.FIELD flags); the only flag
parsing inside the package; all the work is in ufbert_jax.analysis.routing_report.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from ufbert_jax import cli, logs
from ufbert_jax.analysis import routing_report

flags.DEFINE_string("workdir", None, "Workdir (model.json, tokenizer.json, checkpoints/).")
flags.DEFINE_string("text", None, "Text file to route (plain, Gutenberg or WikiExtractor).")
flags.DEFINE_string("out", None, "Folder for routing.json and the PNGs.")
flags.DEFINE_integer("max_tokens", 0, "Analyse only the first N tokens of the text (0: all).")
config_flags.DEFINE_config_dict("config", routing_report.default_config(), "Analysis settings.")
flags.mark_flags_as_required(["workdir", "text", "out"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logs.setup()  # orbax logs every restore at INFO
    FLAGS = flags.FLAGS
    result = routing_report.analyze_workdir(
        FLAGS.workdir, FLAGS.text, FLAGS.out, FLAGS.max_tokens, FLAGS.config
    )
    print(routing_report.table(result))
    print("wrote", ", ".join([f"{FLAGS.out}/{routing_report.ROUTING_FILE}", *result["figures"]]))


if __name__ == "__main__":
    cli.run(main, "python -m ufbert_jax.analysis")
