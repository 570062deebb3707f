"""The input of every FFF layer of a model, captured without touching the model code.

Shape legend: B batch, S sequence, H hidden.

`tap` returns an eval-mode copy of the model (sharing its arrays) in which every FastFeedForward is wrapped
by a module that sows its input under nnx.capture and then calls it unchanged, so the copy computes exactly
what the model computes while the inputs are recorded. Layers are found by type, whatever their names.
"""

from __future__ import annotations

import jax
from flax import nnx

from ufbert_jax.model import FastFeedForward

FFF_INPUT = "fff_input"


class _Tap(nnx.Module):
    """Sows the [B, S, H] input of `inner` (a FastFeedForward), then runs it."""

    def __init__(self, inner: FastFeedForward):
        self.inner = inner

    def __call__(self, h: jax.Array) -> jax.Array:
        self.sow(nnx.Intermediate, FFF_INPUT, h, capture_noop=True)
        return self.inner(h)


def tap(model: nnx.Module) -> tuple[nnx.Module, list[FastFeedForward]]:
    """(an eval-mode copy of `model` whose FFF layers record their inputs, those layers in model order).

    The copy shares the model's arrays; the model itself is left as it is.
    """
    copy = nnx.clone(model)
    copy.eval()
    paths = [path for path, node in nnx.iter_graph(copy) if isinstance(node, FastFeedForward)]
    if not paths:
        raise ValueError(f"{type(model).__name__} has no FastFeedForward layer (feedforward='dense'?)")
    layers = []
    for path in paths:
        parent = copy
        for key in path[:-1]:
            parent = parent[key] if isinstance(key, int) else getattr(parent, key)
        layer = parent[path[-1]] if isinstance(path[-1], int) else getattr(parent, path[-1])
        if isinstance(path[-1], int):
            parent[path[-1]] = _Tap(layer)
        else:
            setattr(parent, path[-1], _Tap(layer))
        layers.append(layer)
    return copy, layers


def run_tapped(
    tapped: nnx.Module, token_ids: jax.Array, attention_mask: jax.Array | None
) -> list[tuple[FastFeedForward, jax.Array]]:
    """Runs a model made by `tap`: (each FFF layer, the input [B, S, H] it received), in model order."""
    forward = nnx.capture(lambda m, ids, mask: m(ids, mask), nnx.Intermediate)
    _, sowed = forward(tapped, token_ids, attention_mask)
    inputs = {path[:-1]: var.get_value() for path, var in nnx.to_flat_state(sowed) if path[-1] == FFF_INPUT}
    taps = [(path, node) for path, node in nnx.iter_graph(tapped) if isinstance(node, _Tap)]
    return [(node.inner, value) for path, node in taps for value in inputs[path]]


def fff_inputs(
    model: nnx.Module, token_ids: jax.Array, attention_mask: jax.Array | None = None
) -> list[jax.Array]:
    """The input [B, S, H] each FFF layer of `model` (in eval mode) receives for token_ids [B, S]."""
    tapped, _ = tap(model)
    return [value for _, value in run_tapped(tapped, token_ids, attention_mask)]
