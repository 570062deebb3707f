"""The MLM loss with sparse prediction, the donated jitted train step and evaluation.

Shape legend: B batch, S sequence, P predicted (masked) positions per sequence, H hidden, V vocabulary.

A batch is a dict of arrays: "input_ids" [B, S] int32 (masked tokens already substituted), "positions"
[B, P] int32 (where the P predictions are) and "labels" [B, P] int32 (the original tokens; -1 = ignore).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ufbert_jax import fff_variants
from ufbert_jax.model import MaskedLM


def mlm_loss(model: MaskedLM, batch: dict) -> tuple[jax.Array, dict]:
    """Mean cross entropy over the masked positions only ("sparse prediction", as the original).

    The decoder (a [H, V] matmul, the largest single one at V = 32768) runs on the B*P gathered hidden
    states instead of all B*S: a quarter of the work at P = S / 4. Returns (loss, metrics) with metrics
    {"loss", "accuracy", "predictions"} (accuracy of the argmax over the counted positions). The returned
    loss adds the FFF hardening loss (fff_variants.encode; off by default); metrics["loss"] is the MLM loss.
    """
    hidden, hardening = fff_variants.encode(model, batch["input_ids"])  # [B, S, H], [] (0.0 by default)
    positions, labels = batch["positions"], batch["labels"]  # [B, P]
    gathered = jnp.take_along_axis(hidden, positions[..., None], axis=1)  # [B, P, H]
    logits = model.decode(gathered)  # [B, P, V] float32
    counted = labels >= 0  # [B, P]
    safe_labels = jnp.where(counted, labels, 0)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, safe_labels)  # [B, P]
    predictions = jnp.maximum(counted.sum(), 1)
    loss = jnp.where(counted, nll, 0.0).sum() / predictions
    correct = (counted & (jnp.argmax(logits, axis=-1) == labels)).sum()
    return loss + hardening, {"loss": loss, "accuracy": correct / predictions, "predictions": counted.sum()}


@functools.partial(nnx.jit, donate_argnames=("model", "optimizer"), static_argnames="apply_update")
def train_step(
    model: MaskedLM,
    optimizer: nnx.Optimizer,
    batch: dict,
    lr_multiplier: jax.Array,
    apply_update: bool = True,
) -> dict:
    """One microbatch: gradient of mlm_loss, then optimizer.update, which adds it to the accumulated sum
    and, when `apply_update`, updates the parameters with the mean of the sum (optim.accumulate_gradients).

    Updates `model` and `optimizer` in place; their buffers are donated. lr_multiplier [] float32 comes
    from the host (budget fraction p); apply_update is static (two compiled programs, no conditional; the
    host's optim.Accumulation says which microbatch completes an update). Returns float32 scalar metrics
    {"loss", "accuracy", "grad_norm"} (grad_norm: of this microbatch's gradient, before clipping).
    """
    (_, metrics), grads = nnx.value_and_grad(mlm_loss, has_aux=True)(model, batch)
    optimizer.update(model, grads, lr_multiplier=lr_multiplier, apply_update=apply_update)
    return {
        "loss": metrics["loss"],
        "accuracy": metrics["accuracy"],
        "grad_norm": optax.tree.norm(nnx.state(grads, nnx.Param)),
    }


@nnx.jit
def _eval_sums(model: MaskedLM, batch: dict) -> dict:
    """Summed loss, correct predictions and prediction count of one batch."""
    _, metrics = mlm_loss(model, batch)
    count = metrics["predictions"]
    return {"loss": metrics["loss"] * count, "correct": metrics["accuracy"] * count, "count": count}


def evaluate(model: MaskedLM, batches) -> dict[str, float]:
    """Mean MLM loss and accuracy over an iterable of batches, weighted by prediction count."""
    total = {"loss": 0.0, "correct": 0.0, "count": 0}
    for batch in batches:
        for name, value in jax.device_get(_eval_sums(model, batch)).items():
            total[name] += value
    if not total["count"]:
        raise ValueError("evaluate got no batches with counted predictions")
    return {
        "loss": float(total["loss"] / total["count"]),
        "accuracy": float(total["correct"] / total["count"]),
    }
