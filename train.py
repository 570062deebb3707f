"""Pretrain a crammed BERT / UltraFastBERT with masked language modelling (docs/pretraining.md).

    python train.py --config=configs/tiny.py --workdir=runs/tiny [--config.steps=50 ...]

Every field of the config file is overridable as --config.FIELD=VALUE (`--show_config` lists them all, with
their values and what they do); the corpus, a tuple of source specs, as
--config.data.sources=/path/to/corpus, --config.data.sources=hf:NAME, a repeated flag (one spec each) or a
tuple literal '("/path/a","hf:NAME")'. Rerunning the same command resumes from the workdir's latest
checkpoint; a workdir holding only converted weights continues pretraining from them with a fresh optimizer.
Ctrl-C (or SIGTERM) saves the current step and exits with 130 (143); the same command then resumes.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from configs.recipe import FIELDS
from ufbert_jax import cli, config_fields, logs
from ufbert_jax.train.interrupt import TrainingInterrupted
from ufbert_jax.train.loop import train_and_evaluate


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """--config (a configs/*.py file, every field a --config.FIELD flag), --workdir and --show_config."""
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Training config file (configs/*.py); every field is a flag --config.FIELD=VALUE (--show_config "
        "lists them).",
        flag_values=flag_values,
        lock_config=True,
    )
    flags.DEFINE_string(
        "workdir", None, "Directory for checkpoints, metrics.jsonl and loss.png.", flag_values=flag_values
    )
    flags.DEFINE_bool(
        "show_config",
        False,
        "Print every field of --config (with the overrides), its value and what it does, then exit.",
        flag_values=flag_values,
    )
    flags.mark_flag_as_required("config", flag_values=flag_values)
    flags.register_multi_flags_validator(
        ["workdir", "show_config"],
        lambda values: bool(values["workdir"] or values["show_config"]),
        "--workdir is required (unless --show_config)",
        flag_values=flag_values,
    )


def main(argv: list[str]) -> None:
    del argv
    if flags.FLAGS.show_config:
        print(config_fields.listing(flags.FLAGS.config, FIELDS))
        return
    logs.setup()
    try:
        train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    except TrainingInterrupted as stopped:
        print(f"Interrupted: {stopped}", file=sys.stderr)
        sys.exit(stopped.exit_code)
    except KeyboardInterrupt:  # before training began (data preparation, start-up): nothing to save
        print(f"Interrupted before training began; {flags.FLAGS.workdir} holds no new step", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    define_flags()
    cli.run(main, "train.py")
