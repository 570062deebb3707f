"""Fine-tune a pretrained workdir on GLUE and report the dev scores (docs/glue.md).

    python eval_glue.py --workdir=WORKDIR --glue_dir=../shared/data/glue [--config.tasks=rte,mrpc ...]
    python eval_glue.py --workdir=WORKDIR --hub

Every field of the config file (default configs/glue.py) is a flag --config.FIELD=VALUE; a per-task field
is --config.task_overrides.TASK.FIELD=VALUE (`--show_config` lists them all, with their values and what
they do). Prints the per-task table and the averages, and writes
results.json and results.md to --out (default WORKDIR/glue) after every task, so finished tasks survive a
crash; the results of other tasks already there (same workdir and step) are kept. A task that fails is
reported and the others run; the exit status is then 1.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from configs.glue import FIELDS
from ufbert_jax import cli, config_fields, logs
from ufbert_jax.glue import evaluate_workdir, report

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "glue.py"

config_flags.DEFINE_config_file(
    "config",
    str(DEFAULT_CONFIG),
    "GLUE recipe config file; every field is a flag --config.FIELD=VALUE (--show_config lists them).",
    lock_config=True,
)
flags.DEFINE_string("workdir", None, "Pretraining workdir to fine-tune from (model.json, tokenizer.json).")
flags.DEFINE_string("glue_dir", None, "GLUE data in the original TSV layout.")
flags.DEFINE_bool("hub", None, "Read nyu-mll/glue from the Hugging Face Hub instead of --glue_dir.")
flags.DEFINE_string("out", None, "Where results.json and results.md go (default WORKDIR/glue).")
flags.DEFINE_bool(
    "show_config", False, "Print every field of --config, its value and what it does, then exit."
)
flags.register_multi_flags_validator(
    ["workdir", "show_config"],
    lambda values: bool(values["workdir"] or values["show_config"]),
    "--workdir is required (unless --show_config)",
)
flags.register_multi_flags_validator(
    ["glue_dir", "hub", "show_config"],
    lambda values: values["show_config"] or (values["glue_dir"] is None) != (values["hub"] is None),
    "give exactly one source: --glue_dir=DIR or --hub (unless --show_config)",
)


def main(argv: list[str]) -> int:
    del argv
    if flags.FLAGS.show_config:
        print(config_fields.listing(flags.FLAGS.config, FIELDS))
        return 0
    logs.setup()
    fl = flags.FLAGS
    if not (fl.hub or fl.glue_dir):  # --nohub alone
        raise app.UsageError("give a source: --glue_dir=DIR or --hub")
    out = Path(fl.out) if fl.out else Path(fl.workdir) / "glue"
    results = evaluate_workdir(fl.config, fl.workdir, None if fl.hub else fl.glue_dir, out)
    print(report.markdown(results), end="")
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    failed = [task for task, record in results["tasks"].items() if record["status"] == "failed"]
    if failed:
        print(f"failed tasks: {', '.join(failed)} (errors above and in results.json)")
        return 1
    return 0


if __name__ == "__main__":
    cli.run(main, "eval_glue.py")
