"""GLUE fine-tuning of the reproduction (docs/RESULTS.md): the paper's recipe (configs/glue.py), shortened
only where one device session's ~6 minutes for GLUE force it, and several fine-tuning seeds per task.

Tasks: CoLA, SST-2, MRPC, STS-B, RTE (the ones whose train and dev files exist offline). Changes against
configs/glue.py:
  sst2 epochs 1       SST-2's 67,349 examples x 5 epochs are 21,050 steps at batch 16, more than the other
                      jobs together; one epoch is 4,210 steps.
  cola epochs 5       the general recipe's 5 (2,675 steps) instead of CoLA's reported 15 (8,019 steps).
  buckets ()          every batch padded to max_len 128: one compiled training shape per head (3 buckets
                      would compile three times per task, which costs more than padding saves at batch 16).
  SEEDS               fine-tuning seeds 0, 1, 2 (--config.seed) for the four small tasks, whose dev scores
                      swing by points between seeds (the reported score is their median), one for SST-2.
Kept: batch 16, lr 4e-5, AdamW (0.9, 0.98, 1e-6), no weight decay, 10% warmup + cosine, dropout 0.1, the dev
score after the last epoch. Steps at batch 16: CoLA 2,675, SST-2 4,210, MRPC 1,150, STS-B 1,800, RTE 780;
with the seeds, 23,425 in all.

    python eval_glue.py --config=configs/glue_h200.py --workdir=WORKDIR --glue_dir=runs/h200-data/glue \
        --config.tasks=rte --config.seed=1

reproduce/session.py runs one such process per task and seed, 8 side by side on the GPU.
"""

import ml_collections

from configs import glue

TASKS = ("cola", "sst2", "mrpc", "stsb", "rte")
SEEDS = {"cola": 3, "sst2": 1, "mrpc": 3, "stsb": 3, "rte": 3}  # fine-tuning seeds 0 .. n-1 per task


def get_config() -> ml_collections.ConfigDict:
    config = glue.get_config()
    config.tasks = ",".join(TASKS)
    config.buckets = ()
    config.task_overrides.cola.epochs = 5
    config.task_overrides.sst2.epochs = 1
    return config
