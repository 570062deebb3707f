"""MLM pretraining with the cramming recipe: optimizer and schedule (optim), loss and the jitted steps
(steps), throughput and logs (metrics), the data-parallel loop with checkpoints and resume (loop).

Importing this package needs only jax, flax, optax, orbax and tqdm: the data pipeline (grain, tokenizer
training) is imported inside `train_and_evaluate`, so the throughput benchmark runs where it is absent.
"""

from ufbert_jax.train.loop import NonFiniteLossError, train, train_and_evaluate
from ufbert_jax.train.optim import OptimizerConfig, accumulation_steps, budget_schedule, make_optimizer
from ufbert_jax.train.steps import evaluate, mlm_loss, train_step

__all__ = [
    "NonFiniteLossError",
    "OptimizerConfig",
    "accumulation_steps",
    "budget_schedule",
    "evaluate",
    "make_optimizer",
    "mlm_loss",
    "train",
    "train_and_evaluate",
    "train_step",
]
