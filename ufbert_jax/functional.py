"""A pure functional view of any model: a plain parameter pytree and a pure forward function.

Shape legend: B batch, S sequence, H hidden, V vocabulary, C classes.

    params, forward = functional.split(model)
    logits = forward(params, token_ids, attention_mask)  # MaskedLM: [B, S, V], as model(token_ids, mask)

`params` is a nested dict of arrays, nnx.to_pure_dict(nnx.state(model, nnx.Param)): the layout of a
checkpoint's "params" item. `forward` rebuilds the module from them (nnx.merge onto the structure taken at
split time) and calls it, so it is a pure function of its arguments: jax.jit, jax.vmap and jax.grad apply
to it directly, and optax updates `params` like any pytree. The module runs in eval mode (dropout off);
state that is not a parameter (RNG streams) is frozen at split time. The outputs are the module's: a
MaskedLM gives MLM logits, `split(model.encoder)` the final hidden states [B, S, H], a SequenceClassifier
its [B, C] logits; `method` picks another call, e.g. `lambda m, ids: m.encoder(ids)[:, 0]`.

Per-example gradients (docs/research.md):

    model = MaskedLM(preset("tiny-fff", fff_impl="masked"), nnx.Rngs(0))
    params, forward = functional.split(model)

    def loss(params, ids, labels):  # one example: ids, labels [S]
        logits = forward(params, ids[None])[0]  # [S, V]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))(params, ids, labels)  # ids [B, S]
    # every leaf of grads has a leading batch axis B: grads[...][b] is example b's gradient
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax import nnx, traverse_util

Params = dict[str, Any]


def split(module: nnx.Module, method: Callable[..., Any] | None = None) -> tuple[Params, Callable[..., Any]]:
    """(params, forward): forward(params, *args, **kwargs) == method(eval-mode module, *args, **kwargs).

    `method` defaults to calling the module. `module` itself is left as it is.
    """
    frozen = nnx.clone(module)
    frozen.eval()
    graphdef, param_state, rest = nnx.split(frozen, nnx.Param, ...)
    template = list(nnx.to_flat_state(param_state))  # [(path, Param)] in a fixed order
    call = method or (lambda m, *args, **kwargs: m(*args, **kwargs))

    def forward(params: Params, *args: Any, **kwargs: Any) -> Any:
        flat = traverse_util.flatten_dict(params)  # {path: array}
        missing = [path for path, _ in template if path not in flat]
        if missing or len(flat) != len(template):
            raise ValueError(
                f"params do not match the module's {len(template)} parameters: missing {missing[:3]}, "
                f"got {len(flat)} arrays (pass the params returned by split)"
            )
        state = nnx.from_flat_state([(path, var.replace(flat[path])) for path, var in template])
        return call(nnx.merge(graphdef, state, rest), *args, **kwargs)

    return nnx.to_pure_dict(param_state), forward
