"""Pretrain a crammed BERT / UltraFastBERT with masked language modelling (docs/pretraining.md).

    python train.py --config=configs/tiny.py --workdir=runs/tiny [--config.steps=50 ...]

Every field of the config file is overridable as --config.FIELD=VALUE. Rerunning the same command resumes
from the workdir's latest checkpoint; a workdir holding only converted weights continues pretraining from
them with a fresh optimizer.
"""

from __future__ import annotations

import logging

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from ufbert_jax.train.loop import train_and_evaluate

config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and loss.png.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax reports every checkpoint step at INFO
    logging.getLogger("ufbert_jax").setLevel(logging.INFO)
    train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
