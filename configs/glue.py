"""GLUE fine-tuning recipe of UltraFastBERT (Belcak & Wattenhofer 2023, following cramming's GLUE setup).

Reproduces the dev-set protocol of ULTRAFASTBERT_FACTS section 4: per task, 5 epochs of AdamW
(0.9, 0.98, eps 1e-6, no weight decay) at lr 4e-5, batch 16, cosine schedule with 10% warmup, dropout 0.1,
max length 128, the dev score after the last epoch reported; CoLA with its own epochs (reportedly 15,
unverified). Tasks: CoLA, SST-2, MRPC, STS-B, QQP, MNLI (m and mm), QNLI, RTE; WNLI on request.

Command (every field below is a flag; per-task values with --override TASK.FIELD=VALUE):

    python eval_glue.py --workdir WORKDIR --glue_dir ../shared/data/glue

Tiny CPU smoke run (tiny-fff workdir, the small tasks, 1 epoch, at most 2000 training examples per task;
about 3-6 minutes on 2 CPU cores, scores near chance as the model is barely pretrained):

    python eval_glue.py --workdir WORKDIR --glue_dir ../shared/data/glue --epochs 1 \
        --max_train_examples 2000 --override cola.epochs=1

Full model (ultrafastbert-1x11, all 8 tasks, ~1.1M training steps in all at batch 16): several hours on
one H200, dominated by MNLI and QQP (about 2/3 of the steps); expected dev scores are those of
ULTRAFASTBERT_FACTS section 5 (e.g. RTE 60.7, MRPC F1 87.5, SST-2 89.9, average without CoLA 83.0).
"""

import ml_collections

from ufbert_jax.glue.tasks import DEFAULT_TASKS


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.tasks = ",".join(DEFAULT_TASKS)  # comma-separated; add "wnli" to run it too
    config.step = -1  # checkpoint step to fine-tune from; -1 is the latest

    config.epochs = 5
    config.batch_size = 16
    config.eval_batch_size = 128  # evaluation only; does not change scores
    config.lr = 4e-5
    config.b1 = 0.9
    config.b2 = 0.98
    config.eps = 1e-6
    config.weight_decay = 0.0
    config.warmup_fraction = 0.1  # linear warmup over this fraction of the steps, then cosine to 0
    config.dropout = 0.1
    config.max_len = 128
    config.buckets = (32, 64, 128)  # padded lengths: one compiled shape each (max_len is always added)
    config.max_train_examples = 0  # > 0: a seeded random subset of each training set (smoke runs)
    config.fff_impl = "auto"  # the fastest forward for evaluation; fine-tuning differentiates the masked form
    config.seed = 0

    config.task_overrides = {"cola": {"epochs": 15}}
    return config
