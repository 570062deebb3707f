"""Math shared by the Pallas (Triton) FFF kernels: GELU and its derivative, tile products, padding, tilings.

Numerics follow ``ufbert_jax.fff_math``: float32 logits, decision and GELU on that logit, NaN routes left.
``lax.erfc`` has no Triton lowering, so the GELU uses XLA's own float32 erfc expansion, term for term, so
that far-negative logits give GELU = -0 as in the reference. Tile products accumulate in float32 (bf16
operands on tensor cores; float32 operands in IEEE mode, not Triton's default TF32).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import triton as plgpu

from ufbert_jax.fff_math import next_node

__all__ = [
    "MIN_DOT", "Tiling", "dot", "gelu", "gelu_grad", "next_node", "pad_hidden", "pick", "round_up",
]  # fmt: skip

# XLA's float32 erfc (Cephes; the chlo-to-mhlo expansion): 1 - u T(u^2) for |u| < 1, else
# exp(-u^2) / |u| times P(1/u^2) (|u| < 2) or R(1/u^2), zero once -u^2 < -MAXLOG, reflected as 2 - erfc(-u).
_ERF_T = (7.853861353153693e-5, -8.010193625184903e-4, 5.188327685732524e-3, -2.685381193529856e-2,
          1.128358514861418e-1, -3.761262582423300e-1, 1.128379165726710e0)  # fmt: skip
_ERFC_P = (2.326819970068386e-2, -1.387039388740657e-1, 3.687424674597105e-1, -5.824733027278666e-1,
           6.210004621745983e-1, -4.944515323274145e-1, 3.404879937665872e-1, -2.741127028184656e-1,
           5.638259427386472e-1)  # fmt: skip
_ERFC_R = (-1.047766399936249e1, 1.297719955372516e1, -7.495518717768503e0, 2.921019019210786e0,
           -1.015265279202700e0, 4.218463358204948e-1, -2.820767439740514e-1,
           5.641895067754075e-1)  # fmt: skip
_MAXLOG = 88.72283905206835
_SQRT_HALF = 0.7071067811865476
_RSQRT_2PI = 0.3989422804014327

# Triton's tensor-core dot needs every dimension >= 16.
MIN_DOT = 16


@dataclasses.dataclass(frozen=True)
class Tiling:
    """How one kernel is launched: tokens per program, Triton warps, hidden columns per chunk (HC), and
    Triton's software-pipelining depth (stages - 1 chunks are loaded ahead of the one being used)."""

    tokens: int
    warps: int
    hidden: int = 128
    stages: int = 2

    def __post_init__(self):
        for name in ("tokens", "hidden"):
            value = getattr(self, name)
            if value < MIN_DOT or value & (value - 1):
                raise ValueError(f"Tiling {name}={value} must be a power of 2 >= {MIN_DOT}")
        if self.warps < 1 or self.stages < 1:
            raise ValueError(f"Tiling needs warps >= 1 and stages >= 1; got {self.warps}, {self.stages}")

    def capped(self, tokens: int, hidden: int) -> Tiling:
        """This tiling with its token and hidden blocks no larger than T and H rounded up to a power of 2
        (>= 16): small calls get small tiles."""
        return dataclasses.replace(
            self,
            tokens=min(self.tokens, next_pow2(max(tokens, MIN_DOT))),
            hidden=min(self.hidden, next_pow2(max(hidden, MIN_DOT))),
        )


def _polynomial(x: jax.Array, coefficients) -> jax.Array:
    """Horner's rule, highest degree first."""
    result = jnp.full_like(x, coefficients[0])
    for coefficient in coefficients[1:]:
        result = result * x + coefficient
    return result


def _erfc(u: jax.Array) -> jax.Array:
    """float32 erfc as XLA computes it (see the constants above), for Triton, which has no erf or erfc."""
    magnitude = jnp.abs(u)
    square = u * u
    reciprocal = 1.0 / square
    tail = jnp.where(magnitude < 2.0, _polynomial(reciprocal, _ERFC_P), _polynomial(reciprocal, _ERFC_R))
    tail = jnp.exp(-square) / magnitude * tail
    tail = jnp.where(-square < -_MAXLOG, 0.0, tail)
    tail = jnp.where(u < 0, 2.0 - tail, tail)
    return jnp.where(magnitude < 1.0, 1.0 - u * _polynomial(square, _ERF_T), tail)


def gelu(z: jax.Array) -> jax.Array:
    """Exact GELU of a float32 logit as ``jax.nn.gelu(approximate=False)``: z erfc(-z / sqrt 2) / 2."""
    return 0.5 * z * _erfc(-z * _SQRT_HALF)


def gelu_grad(z: jax.Array) -> jax.Array:
    """GELU'(z) = Phi(z) + z phi(z) of a float32 logit, the derivative of ``gelu``."""
    return 0.5 * _erfc(-z * _SQRT_HALF) + z * jnp.exp(-0.5 * z * z) * _RSQRT_2PI


def dot(a: jax.Array, b: jax.Array, trans_a: bool = False, trans_b: bool = False) -> jax.Array:
    """Tile product, float32 accumulation; float32 operands in IEEE mode (Triton's default: TF32)."""
    return plgpu.dot(a, b, trans_a=trans_a, trans_b=trans_b, precision=lax.Precision.HIGHEST)


def pick(values: jax.Array, index: jax.Array) -> jax.Array:
    """values[..., index] along the last axis by a one-hot sum: Triton has no gather from registers.

    values [..., W]; index [...] int32 -> [...]; an index outside [0, W) gives 0.
    """
    column = lax.broadcasted_iota(jnp.int32, values.shape, values.ndim - 1)
    return jnp.sum(jnp.where(column == jnp.expand_dims(index, -1), values, 0), axis=-1)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def next_pow2(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()


def pad_hidden(a: jax.Array, hidden: int) -> jax.Array:
    """Zero-pads the last axis to `hidden` columns (zeros add nothing to logits or outputs)."""
    pad = hidden - a.shape[-1]
    return a if pad == 0 else jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)])
