"""Our parameters <-> the original PyTorch state dict (key names and layouts: docs/published_model.md).

Layout differences, each handled by one transform:
  * PyTorch Linear weights are [out, in]; our kernels are [in, out] (transpose);
  * the FFF rows are one [K*N, H] matrix (tree-major) in the original, [K, N, H] here; its output matrix is
    [H, K*N] there;
  * the positional scale is [1] there, a scalar here;
  * the fused QKV needs no permutation: both sides read it as [heads, 3 * head_dim] per token;
  * the original stores a norm_factor buffer per layer (head_dim^-0.5) and the tied decoder as a second
    copy of the word embedding ("decoder.weight", which wins when the copies differ: it loads last; a
    TiedCopiesWarning names the largest difference).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterator

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ufbert_jax import model as model_lib


@dataclasses.dataclass(frozen=True)
class _Transform:
    to_original: Callable[[np.ndarray], np.ndarray]
    from_original: Callable[[np.ndarray, tuple[int, ...]], np.ndarray]


_SAME = _Transform(lambda a: a, lambda a, shape: a)
_TRANSPOSE = _Transform(lambda a: a.T, lambda a, shape: a.T)
_SCALAR = _Transform(lambda a: a.reshape(1), lambda a, shape: a.reshape(shape))
_FLATTEN_TREES = _Transform(lambda a: a.reshape(-1, *a.shape[2:]), lambda a, shape: a.reshape(shape))
# [K, N, H] -> [K*N, H] -> [H, K*N]
_FLATTEN_TREES_T = _Transform(lambda a: a.reshape(-1, a.shape[-1]).T, lambda a, shape: a.T.reshape(shape))


def _original_shape(transform: _Transform, shape: tuple[int, ...]) -> tuple[int, ...]:
    return transform.to_original(np.empty(shape, np.float32)).shape


def _norm(prefix: str, norm: nnx.LayerNorm) -> Iterator[tuple[str, nnx.Variable, _Transform]]:
    yield f"{prefix}.weight", norm.scale, _SAME
    yield f"{prefix}.bias", norm.bias, _SAME


def _pairs(module: nnx.Module) -> Iterator[tuple[str, nnx.Variable, _Transform]]:
    """(original key, our variable, transform) for every parameter of a MaskedLM or SequenceClassifier."""
    encoder: model_lib.Encoder = module.encoder
    embedding = encoder.embedding
    yield "encoder.embedding.word_embedding.weight", embedding.word.embedding, _SAME
    yield "encoder.embedding.pos_embedding.scale_factor", embedding.position_scale, _SCALAR
    yield from _norm("encoder.embedding.norm", embedding.norm)
    for i, layer in enumerate(encoder.layers):
        p = f"encoder.layers.{i}"
        yield from _norm(f"{p}.norm1", layer.norm1)
        yield from _norm(f"{p}.norm2", layer.norm2)
        yield f"{p}.attn.self_attention.query_key_value.weight", layer.attn.query_key_value.kernel, _TRANSPOSE
        yield f"{p}.attn.dense.weight", layer.attn.dense.kernel, _TRANSPOSE
        if isinstance(layer.ffn, model_lib.FastFeedForward):
            yield f"{p}.ffn.linear_in.weight", layer.ffn.w_in, _FLATTEN_TREES
            yield f"{p}.ffn.linear_in.bias", layer.ffn.b_in, _FLATTEN_TREES
            yield f"{p}.ffn.linear_out.weight", layer.ffn.w_out, _FLATTEN_TREES_T
        else:
            yield f"{p}.ffn.dense_in.weight", layer.ffn.dense_in.kernel, _TRANSPOSE
            yield f"{p}.ffn.dense_out.weight", layer.ffn.dense_out.kernel, _TRANSPOSE
    yield from _norm("encoder.final_norm", encoder.final_norm)
    if isinstance(module, model_lib.SequenceClassifier):
        yield "pooler.dense.weight", module.pooler.kernel, _TRANSPOSE
        yield "pooler.dense.bias", module.pooler.bias, _SAME
        yield "head.weight", module.head.kernel, _TRANSPOSE
        yield "head.bias", module.head.bias, _SAME


def _norm_factor_key(layer: int) -> str:
    return f"encoder.layers.{layer}.attn.self_attention.norm_factor"


def _buffers(module: nnx.Module) -> dict[str, np.ndarray]:
    """Non-parameter entries the original stores: per-layer norm_factor and (MLM) the decoder copy."""
    cfg = module.encoder.cfg
    buffers = {_norm_factor_key(i): np.asarray(cfg.head_dim**-0.5, np.float32) for i in range(cfg.layers)}
    if isinstance(module, model_lib.MaskedLM):
        buffers["decoder.weight"] = np.asarray(module.encoder.embedding.word.embedding[...])
    return buffers


def _buffer_shapes(module: nnx.Module) -> dict[str, tuple[int, ...]]:
    """The shapes of `_buffers`, without reading values (so abstract modules from nnx.eval_shape work)."""
    shapes = {_norm_factor_key(i): () for i in range(module.encoder.cfg.layers)}
    if isinstance(module, model_lib.MaskedLM):
        shapes["decoder.weight"] = tuple(module.encoder.embedding.word.embedding.shape)
    return shapes


def to_state_dict(module: nnx.Module) -> dict[str, np.ndarray]:
    """The original-format state dict (C-contiguous float32 numpy arrays) of a MaskedLM or SequenceClassifier.

    C-contiguous because safetensors.numpy.save_file writes an array's memory as is: a transposed view would
    be saved transposed, silently.
    """
    state = {
        key: np.ascontiguousarray(transform.to_original(np.asarray(var[...])))
        for key, var, transform in _pairs(module)
    }
    return {**state, **_buffers(module)}


def expected_shapes(module: nnx.Module) -> dict[str, tuple[int, ...]]:
    """Original key -> shape, for every entry `to_state_dict` writes; works on nnx.eval_shape modules too."""
    shapes = {key: _original_shape(t, tuple(var.shape)) for key, var, t in _pairs(module)}
    return {**shapes, **_buffer_shapes(module)}


class StateDictError(ValueError):
    """A state dict that does not fit the model; the message lists every problem at once."""


class TiedCopiesWarning(UserWarning):
    """The two copies of the tied word embedding in a state dict differ; decoder.weight is used."""


# norm_factor is head_dim^-0.5 rounded to the file's dtype: bfloat16 keeps 8 significant bits, so a stored
# value is within 2^-9 of the exact one. Any other head dim gives a value far outside this tolerance.
NORM_FACTOR_RTOL = 2.0**-8


def bad_values(state_dict: dict[str, np.ndarray]) -> list[str]:
    """One line per entry that is not a floating-point array or holds NaN or infinity (empty: all good).

    Weights are cast to the model's dtype on load, so an integer or boolean tensor would pass silently,
    and one non-finite weight turns every output it reaches into NaN.
    """
    problems = []
    for key, value in state_dict.items():
        value = np.asarray(value)
        if not jnp.issubdtype(value.dtype, jnp.floating):  # numpy's test misses ml_dtypes' bfloat16
            problems.append(f"{key}: dtype {value.dtype}, expected floating point")
        elif not np.isfinite(value).all():
            count = int(value.size - np.isfinite(value).sum())
            problems.append(f"{key}: {count} of {value.size} values are NaN or infinite")
    return problems


def check_state_dict(module: nnx.Module, state_dict: dict[str, np.ndarray]) -> None:
    """Raises StateDictError listing missing keys, unexpected keys, wrong shapes and bad values together."""
    expected = expected_shapes(module)
    optional = {"decoder.weight"}  # the tied copy; the word embedding alone is enough
    missing = sorted(set(expected) - set(state_dict) - optional)
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(
        f"{key}: expected {expected[key]}, got {tuple(np.shape(value))}"
        for key, value in state_dict.items()
        if key in expected and tuple(np.shape(value)) != expected[key]
    )
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes ({len(wrong)}): {'; '.join(wrong)}")
    problems += bad_values({key: value for key, value in state_dict.items() if key in expected})
    cfg = module.encoder.cfg
    for i in range(cfg.layers):
        key = _norm_factor_key(i)
        if key not in state_dict or np.size(state_dict[key]) != 1:  # absent or misshapen: listed above
            continue
        stored = float(np.reshape(state_dict[key], ()))
        if not np.isclose(stored, cfg.head_dim**-0.5, rtol=NORM_FACTOR_RTOL, atol=0):
            problems.append(f"{key}={stored} != head_dim^-0.5 = {cfg.head_dim**-0.5:.6g}")
    if problems:
        raise StateDictError("state dict does not fit the model:\n  " + "\n  ".join(problems))


def _warn_if_tied_copies_differ(state_dict: dict[str, np.ndarray]) -> None:
    """A TiedCopiesWarning with the largest difference where decoder.weight and the word embedding differ."""
    word = np.asarray(state_dict["encoder.embedding.word_embedding.weight"], np.float64)
    decoder = np.asarray(state_dict["decoder.weight"], np.float64)
    difference = np.abs(word - decoder)  # [V, H]
    if not difference.any():
        return
    where = np.unravel_index(int(np.argmax(difference)), difference.shape)
    count = int(np.count_nonzero(difference))
    warnings.warn(
        "the tied copies encoder.embedding.word_embedding.weight and decoder.weight differ: largest "
        f"difference {difference[where]:.3g} at [{where[0]}, {where[1]}] ({count} of {difference.size} "
        "values differ); decoder.weight is used, as the original loads it last",
        TiedCopiesWarning,
        stacklevel=3,
    )


def load_state_dict(module: nnx.Module, state_dict: dict[str, np.ndarray]) -> None:
    """Writes an original-format state dict into `module` in place (after `check_state_dict`)."""
    check_state_dict(module, state_dict)
    if "decoder.weight" in state_dict:
        # The original ties the decoder to the word embedding and loads decoder.weight last.
        _warn_if_tied_copies_differ(state_dict)
        state_dict = {**state_dict, "encoder.embedding.word_embedding.weight": state_dict["decoder.weight"]}
    for key, var, transform in _pairs(module):
        value = transform.from_original(np.asarray(state_dict[key]), tuple(var.shape))
        var[...] = jnp.asarray(value, dtype=var.dtype)
