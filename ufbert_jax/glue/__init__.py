"""GLUE fine-tuning and evaluation: task specs and sources, metrics, the
fine-tuning loop and the results report (docs/glue.md)."""

from ufbert_jax.glue.finetune import Pretrained, Recipe, evaluate_workdir, finetune_task, run_glue
from ufbert_jax.glue.tasks import DEFAULT_TASKS, TASKS, Skipped, TaskData, get_task, load_hub, load_local

__all__ = [
    "DEFAULT_TASKS",
    "TASKS",
    "Pretrained",
    "Recipe",
    "Skipped",
    "TaskData",
    "evaluate_workdir",
    "finetune_task",
    "get_task",
    "load_hub",
    "load_local",
    "run_glue",
]
