"""GLUE fine-tuning recipe of UltraFastBERT (Belcak & Wattenhofer 2023, following cramming's GLUE setup).

Reproduces the paper's dev-set protocol (docs/glue.md): per task, 5 epochs of AdamW (0.9, 0.98, eps 1e-6,
no weight decay) at lr 4e-5, batch 16, cosine schedule with 10% warmup, dropout 0.1, max length 128, the
dev score after the last epoch reported; CoLA with its own epochs (reportedly 15, unverified). Tasks:
CoLA, SST-2, MRPC, STS-B, QQP, MNLI (m and mm), QNLI, RTE; WNLI on request.

Command (every field is a flag --config.FIELD=VALUE; a per-task value is
--config.task_overrides.TASK.FIELD=VALUE and wins over the top-level one; FIELDS below says what each field
does, and `python eval_glue.py --show_config` prints it beside every value):

    python eval_glue.py --workdir=WORKDIR --glue_dir=../shared/data/glue

Tiny CPU smoke run (tiny-fff workdir, the small tasks, 1 epoch, at most 2000 training examples per task;
about 3-6 minutes on 2 CPU cores, scores near chance as the model is barely pretrained):

    python eval_glue.py --workdir=WORKDIR --glue_dir=../shared/data/glue --config.epochs=1 \
        --config.max_train_examples=2000 --config.task_overrides.cola.epochs=1

Full model (ultrafastbert-1x11, all 8 tasks, ~1.1M training steps in all at batch 16): several hours on
one H200, dominated by MNLI and QQP (about 2/3 of the steps); the paper's dev scores to compare against
are in docs/glue.md (e.g. RTE 60.7, MRPC F1 87.5, SST-2 89.9, average without CoLA 83.0).
"""

import ml_collections
from ml_collections import config_dict

from ufbert_jax.glue.tasks import DEFAULT_TASKS, TASKS

# Fields that are not part of a task's recipe (so not in task_overrides).
RUN_FIELDS = ("tasks", "step", "task_overrides")


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.tasks = ",".join(DEFAULT_TASKS)
    config.step = -1

    config.epochs = 5
    config.batch_size = 16
    config.eval_batch_size = 128
    config.lr = 4e-5
    config.b1 = 0.9
    config.b2 = 0.98
    config.eps = 1e-6
    config.weight_decay = 0.0
    config.warmup_fraction = 0.1
    config.dropout = 0.1
    config.max_len = 128
    config.buckets = (32, 64, 128)
    config.max_train_examples = 0
    config.fff_impl = "auto"
    config.seed = 0

    # Per task, every recipe field as an unset placeholder (None: the top-level value applies), so each
    # one is a typed flag --config.task_overrides.TASK.FIELD=VALUE.
    recipe = {name: value for name, value in config.items() if name not in RUN_FIELDS}
    config.task_overrides = {
        task: {name: config_dict.placeholder(type(value)) for name, value in recipe.items()} for task in TASKS
    }
    config.task_overrides.cola.epochs = 15
    return config


#: One line per field of get_config(): what it does (eval_glue.py --show_config prints these).
FIELDS = {
    "tasks": "comma-separated GLUE tasks to run (add wnli to run it too)",
    "step": "checkpoint step of the workdir to fine-tune from (-1: the latest)",
    "epochs": "training epochs per task",
    "batch_size": "training batch size",
    "eval_batch_size": "evaluation batch size (does not change the scores)",
    "lr": "peak AdamW learning rate",
    "b1": "AdamW beta1",
    "b2": "AdamW beta2",
    "eps": "AdamW epsilon",
    "weight_decay": "AdamW weight decay",
    "warmup_fraction": "linear warmup over this fraction of the steps, then cosine decay to 0",
    "dropout": "dropout rate while fine-tuning",
    "max_len": "tokens per example (longer ones are cut, pairs longest-first)",
    "buckets": "padded sequence lengths, one compiled shape each (max_len is always added)",
    "max_train_examples": "> 0: a seeded random subset of this many training examples per task (smoke runs)",
    "fff_impl": "FFF implementation (auto: the fastest forward and the fastest training form here)",
    "seed": "seed of the classifier head, the data order and dropout",
    "task_overrides.*": "per-task value of the field of that name (None: the top-level value applies)",
}
