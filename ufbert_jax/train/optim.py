"""The pretraining optimizer of the cramming recipe ("bert-o4", used for UltraFastBERT), as optax pieces.

AdamW (lr 1e-3, betas (0.9, 0.98), eps 1e-12, weight decay 0.01 off for LayerNorm parameters, biases and the
positional scale), the gradient clipped to global norm 0.5 first, the budget triangle
min(0.25 + p, 4 - 4p) on the learning rate, and a batch ramp from one microbatch to the final batch by
gradient accumulation, reached at 60% of the budget. p is the elapsed fraction of the budget, of steps or of
wall-clock time: the host computes it, so the schedule and the ramp enter the jitted step as a scalar
input (`lr_multiplier`) and a static flag (`apply_update`: whether this microbatch completes an update), so a
time-based budget works under jit with two compiled programs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

# Leaf names that get weight decay: the weight matrices (Linear kernels, the tied word embedding, the FFF
# node weights). Everything else (LayerNorm scale and bias, every bias, the FFF input bias b_in, the scalar
# positional scale) is a gain or an offset, which the recipe leaves undecayed. The positional scale is a
# learned gain on the sinusoid table, the role a LayerNorm scale plays: decaying it would pull the position
# signal towards zero for no regularising benefit. (The original's name filter "bias"/"norm" happened to
# decay it; at lr * wd = 1e-5 per step the difference is negligible, the intent is clearer this way.)
DECAYED_LEAVES = frozenset({"kernel", "embedding", "w_in", "w_out"})


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with global-norm clipping; the defaults are the cramming recipe's (docs/pretraining.md)."""

    lr: float = 1e-3
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-12
    weight_decay: float = 0.01
    clip_norm: float = 0.5


def budget_schedule(progress: float) -> float:
    """The learning-rate multiplier min(0.25 + p, 4 - 4p) at budget fraction p (clipped to [0, 1]).

    0.25 at the start, rising linearly to its peak 1.0 at p = 0.75, then linearly to 0 at the end.
    """
    p = min(max(float(progress), 0.0), 1.0)
    return min(0.25 + p, 4.0 - 4.0 * p)


def step_progress(step: int, first_step: int, total_steps: int) -> float:
    """p for a budget of `total_steps` microbatch steps counted from `first_step`."""
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1")
    return (step - first_step) / total_steps


def time_progress(elapsed_seconds: float, budget_seconds: float) -> float:
    """p for a wall-clock budget (the original's 24 hours): elapsed / budget."""
    if budget_seconds <= 0:
        raise ValueError(f"budget_seconds={budget_seconds} must be > 0")
    return elapsed_seconds / budget_seconds


def accumulation_steps(progress: float, microbatch: int, final_batch: int, ramp_fraction: float) -> int:
    """Microbatches per optimizer update at budget fraction p: the cramming batch ramp.

    The effective batch grows linearly in p, in whole microbatches, from one microbatch at p = 0 to
    `final_batch` at p = `ramp_fraction` (the original: min((floor(p / ramp * final / micro) + 1) * micro,
    final)). ramp_fraction = 0 means the final batch from the start.
    """
    if microbatch < 1 or final_batch % microbatch:
        raise ValueError(f"final_batch={final_batch} must be a positive multiple of {microbatch=}")
    most = final_batch // microbatch
    if ramp_fraction <= 0:
        return most
    return min(int(max(progress, 0.0) / ramp_fraction * most) + 1, most)


def weight_decay_mask(params) -> dict:
    """True for the leaves that get weight decay (see DECAYED_LEAVES), over any nested dict of arrays."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) in DECAYED_LEAVES, params
    )


def scale_by_multiplier() -> optax.GradientTransformationExtraArgs:
    """Multiplies the updates by the extra argument `lr_multiplier` (the budget schedule, host-computed)."""

    def update(updates, state, params=None, *, lr_multiplier, **extra_args):
        del params, extra_args
        return jax.tree.map(lambda u: u * jnp.asarray(lr_multiplier, u.dtype), updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


class AccumulationState(NamedTuple):
    micro_steps: jax.Array  # int32 [], microbatches in grad_sum
    grad_sum: optax.Updates  # sum of their gradients
    inner: optax.OptState


def accumulate_gradients(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Gradient accumulation decided by the host, like optax.MultiSteps without its conditional.

    `update` takes the extra argument `apply_update`, a Python bool (static under jit). False adds the
    gradient to a running sum and returns zero updates; True adds it, gives `inner` the mean of the sum,
    returns inner's updates and resets the sum. Other extra arguments go to `inner`. The host knows when
    an update is due (Accumulation below), so the compiled step holds no conditional: on a GPU, XLA runs
    `lax.cond` by copying its predicate to the host, which blocks the step's dispatch until the device has
    computed the whole gradient, and the host can no longer run ahead. The sum lives in the optimizer
    state, so a checkpoint taken in the middle of an accumulation resumes exactly.
    """
    inner = optax.with_extra_args_support(inner)

    def init(params):
        return AccumulationState(jnp.zeros([], jnp.int32), optax.tree.zeros_like(params), inner.init(params))

    def update(grads, state, params=None, *, apply_update: bool, **extra_args):
        count = state.micro_steps + 1
        grad_sum = jax.tree.map(jnp.add, state.grad_sum, grads)
        if not apply_update:
            return optax.tree.zeros_like(grads), AccumulationState(count, grad_sum, state.inner)
        mean = jax.tree.map(lambda g: g / count.astype(g.dtype), grad_sum)
        updates, inner_state = inner.update(mean, state.inner, params, **extra_args)
        return updates, AccumulationState(jnp.zeros_like(count), optax.tree.zeros_like(grad_sum), inner_state)

    return optax.GradientTransformationExtraArgs(init, update)


@dataclasses.dataclass
class Accumulation:
    """The host's copy of the optimizer state's micro_steps: says which microbatch completes an update.

    `pending` microbatches are summed and not yet applied (read from the restored optimizer state when a
    run resumes). `due(k)` counts one more microbatch and says whether it completes an update of k
    microbatches, the accumulation count of the batch ramp at this step.
    """

    pending: int = 0

    def due(self, accumulation_steps: int) -> bool:
        self.pending += 1
        if self.pending < accumulation_steps:
            return False
        self.pending = 0
        return True


# Cached: nnx.Optimizer keeps the transformation in its static graph, so a new one (new closures) for an
# equal config would make every jitted step that takes the optimizer retrace and recompile.
@functools.cache
def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformationExtraArgs:
    """clip(global norm) -> Adam -> decoupled weight decay (masked) -> -lr -> x lr_multiplier, accumulated.

    `update` takes the extra arguments `lr_multiplier` (budget_schedule(p)) and `apply_update` (see
    accumulate_gradients). The decay is scaled by the learning rate and its multiplier, as in
    PyTorch's AdamW: p <- p - lr * m(p) * (adam + wd * p).
    """
    return accumulate_gradients(
        optax.chain(
            optax.clip_by_global_norm(config.clip_norm),
            optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps),
            optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask),
            optax.scale(-config.lr),
            scale_by_multiplier(),
        )
    )
