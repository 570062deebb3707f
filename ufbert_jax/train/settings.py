"""The numeric settings of a train config, checked before anything is written (`check`).

One rule per field of configs/recipe.py's optimizer, schedule, data, checkpoint and logging settings;
`check` reports every field that breaks its rule at once, each with its value and what is allowed, so a
negative learning rate or checkpoint_every=-1 stops the run before the workdir exists instead of training
with it. The model fields are checked by ModelConfig, the sequence length against the model by
loop.model_config.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import ml_collections


class ConfigError(ValueError):
    """A train config with values outside what the trainer accepts; the message lists each of them."""


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _int_at_least(low: int, note: str = "") -> tuple[Callable, str]:
    return (lambda v: _integer(v) and v >= low), f"an integer >= {low}{note}"


def _number_rule(test: Callable[[float], bool], allowed: str) -> tuple[Callable, str]:
    return (lambda v: _number(v) and test(v)), f"a finite number {allowed}"


SEED_LIMIT = 2**31 - 1  # seed + 1 seeds the evaluation masking; both fit an int32

# field (dotted) -> (test, what is allowed)
RULES: dict[str, tuple[Callable, str]] = {
    "seq_len": _int_at_least(1),
    "microbatch": _int_at_least(1),
    "final_batch": _int_at_least(1, ", a multiple of microbatch"),
    "ramp_fraction": _number_rule(lambda v: 0 <= v <= 1, "in [0, 1] (0: the final batch from the start)"),
    "steps": _int_at_least(0, " (0 with budget_hours > 0: a time budget)"),
    "budget_hours": _number_rule(lambda v: v >= 0, ">= 0 (0: a budget of steps)"),
    "optimizer.lr": _number_rule(lambda v: v > 0, "> 0"),
    "optimizer.b1": _number_rule(lambda v: 0 <= v < 1, "in [0, 1)"),
    "optimizer.b2": _number_rule(lambda v: 0 <= v < 1, "in [0, 1)"),
    "optimizer.eps": _number_rule(lambda v: v > 0, "> 0"),
    "optimizer.weight_decay": _number_rule(lambda v: v >= 0, ">= 0"),
    "optimizer.clip_norm": _number_rule(lambda v: v > 0, "> 0"),
    "checkpoint_every": _int_at_least(0, " (0: save only at the end of the budget and on a stop signal)"),
    "keep_checkpoints": _int_at_least(1),
    "log_every": _int_at_least(0, " (0: log only at the end)"),
    "eval_every": _int_at_least(0, " (0: never evaluate)"),
    "eval_batches": _int_at_least(1),
    "seed": ((lambda v: _integer(v) and 0 <= v < SEED_LIMIT), f"an integer in [0, {SEED_LIMIT})"),
    "num_devices": _int_at_least(0, " (0: every device)"),
    "data.worker_count": _int_at_least(0, " (0: mask in the training process)"),
    "distributed.num_processes": _int_at_least(0, " (0: detected)"),
    "distributed.process_id": _int_at_least(-1, " (-1: detected)"),
}


def _value(config: ml_collections.ConfigDict, field: str):
    node = config
    for part in field.split("."):
        node = node[part]
    return node


def problems(config: ml_collections.ConfigDict) -> list[str]:
    """One line per setting of `config` that breaks its rule (empty: all good)."""
    found = []
    for field, (test, allowed) in RULES.items():
        try:
            value = _value(config, field)
        except (KeyError, AttributeError):
            found.append(f"{field} is missing")
            continue
        if not test(value):
            found.append(f"{field}={value!r} must be {allowed}")
    microbatch, final_batch = config.get("microbatch"), config.get("final_batch")
    if _integer(microbatch) and _integer(final_batch) and microbatch >= 1 and final_batch % microbatch:
        found.append(f"final_batch={final_batch} must be a multiple of microbatch={microbatch}")
    steps, hours = config.get("steps"), config.get("budget_hours")
    if _integer(steps) and _number(hours) and steps < 1 and hours <= 0:
        found.append(
            f"need a budget: steps >= 1 or budget_hours > 0 (got steps={steps}, budget_hours={hours})"
        )
    return found


def check(config: ml_collections.ConfigDict) -> None:
    """A ConfigError listing every setting of `config` outside what is allowed; reads only."""
    if found := problems(config):
        raise ConfigError(f"invalid train config: {'; '.join(found)}")
