"""Fine-tune a pretrained workdir on GLUE and report the dev scores (docs/glue.md).

    python eval_glue.py --workdir=WORKDIR --glue_dir=../shared/data/glue [--config.tasks=rte,mrpc ...]
    python eval_glue.py --workdir=WORKDIR --hub

Every field of the config file (default configs/glue.py) is a flag --config.FIELD=VALUE; a per-task field
is --config.task_overrides.TASK.FIELD=VALUE. Prints the per-task table and the averages, and writes
results.json and results.md to --out (default WORKDIR/glue) after every task, so finished tasks survive a
crash; the results of other tasks already there (same workdir and step) are kept. A task that fails is
reported and the others run; the exit status is then 1.
"""

from __future__ import annotations

import logging
from pathlib import Path

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from ufbert_jax import cli
from ufbert_jax.glue import evaluate_workdir, report

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "glue.py"

config_flags.DEFINE_config_file("config", str(DEFAULT_CONFIG), "GLUE recipe config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Pretraining workdir to fine-tune from (model.json, tokenizer.json).")
flags.DEFINE_string("glue_dir", None, "GLUE data in the original TSV layout.")
flags.DEFINE_bool("hub", None, "Read nyu-mll/glue from the Hugging Face Hub instead of --glue_dir.")
flags.DEFINE_string("out", None, "Where results.json and results.md go (default WORKDIR/glue).")
flags.mark_flags_as_required(["workdir"])
flags.mark_flags_as_mutual_exclusive(["glue_dir", "hub"], required=True)


def main(argv: list[str]) -> int:
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax reports every restore at INFO
    logging.getLogger("ufbert_jax").setLevel(logging.INFO)
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
