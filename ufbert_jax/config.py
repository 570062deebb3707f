"""Model configuration and the paper's presets.

Presets follow Belcak & Wattenhofer, "Exponentially Faster Language Modelling" (arXiv 2311.10770), table 1:
crammedBERT-3072 and -4095 (dense GELU feedforward) and UltraFastBERT-KxD (K trees of depth D, FFF
feedforward) on the crammed BERT encoder of Geiping & Goldstein (16 layers, hidden 768, 12 heads, pre-LN,
vocabulary 32768, sequence length 128).
"""

from __future__ import annotations

import dataclasses
import re

import jax.numpy as jnp

from ufbert_jax.fff_names import check_impl, check_routing

FEEDFORWARDS = ("dense", "fff")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A crammed BERT encoder with a dense or FFF feedforward. Hashable, so it can be a static jit arg.

    Attributes:
      feedforward: "dense" (Linear H->ff_width, GELU, Linear ff_width->H, no biases) or "fff".
      ff_width: width of the dense feedforward.
      fff_trees, fff_depth: K and D of the FFF feedforward (K trees of 2^(D+1)-1 nodes).
      fff_impl: how the FFF runs (see ufbert_jax.fff.resolve_impl); the model never looks at it.
      fff_routing, fff_hardening, fff_transpose: FFF variants for experiments (ufbert_jax.fff_variants):
        "hard" routing with no hardening loss and no transpositions is the original UltraFastBERT.
      attention_impl: how attention runs: "auto", "xla" or "cudnn" (see
        ufbert_jax.model.resolve_attention_impl); the same mathematics in every one.
      dtype: compute dtype; parameters are always float32.
      dropout: rate for embeddings, attention probabilities and residual branches (0.1 in the original;
        pretraining runs with dropout off, GLUE fine-tuning with it on).
    """

    vocab_size: int = 32768
    hidden: int = 768
    layers: int = 16
    heads: int = 12
    max_len: int = 128
    feedforward: str = "fff"
    ff_width: int = 3072
    fff_trees: int = 1
    fff_depth: int = 11
    fff_impl: str = "auto"
    fff_routing: str = "hard"
    fff_hardening: float = 0.0
    fff_transpose: float = 0.0
    attention_impl: str = "auto"
    norm_eps: float = 1e-12
    dropout: float = 0.1
    dtype: str = "float32"
    pad_id: int = 0

    def __post_init__(self):
        if self.feedforward not in FEEDFORWARDS:
            raise ValueError(f"feedforward={self.feedforward!r}; expected one of {FEEDFORWARDS}")
        check_impl(self.fff_impl)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}; expected one of {DTYPES}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} must be a multiple of heads={self.heads}")
        if self.hidden % 2:
            raise ValueError(f"hidden={self.hidden} must be even (sinusoidal positions pair sin/cos)")
        for name in ("vocab_size", "hidden", "layers", "heads", "max_len", "ff_width", "fff_trees"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.fff_depth < 0:
            raise ValueError(f"fff_depth={self.fff_depth} must be >= 0")
        check_routing(self.fff_routing)
        if self.fff_hardening < 0:
            raise ValueError(f"fff_hardening={self.fff_hardening} must be >= 0")
        if not 0.0 <= self.fff_transpose < 1.0:
            raise ValueError(f"fff_transpose={self.fff_transpose} must be in [0, 1)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def fff_nodes(self) -> int:
        """N, nodes per tree."""
        return 2 ** (self.fff_depth + 1) - 1

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


_FFF_PRESET = re.compile(r"ultrafastbert-(\d+)x(\d+)")

#: The paper's model rows, by name. Any "ultrafastbert-KxD" also resolves through `preset`.
PAPER_PRESETS = (
    "crammedbert-3072",
    "crammedbert-4095",
    *(
        f"ultrafastbert-{k}x{d}"
        for k, d in (
            (3072, 0), (1536, 1), (512, 2), (256, 3), (128, 4), (64, 5),
            (32, 6), (16, 7), (8, 8), (4, 9), (2, 10), (1, 11),
        )
    ),
)  # fmt: skip

#: Small models for tests and the CPU demo, by name.
TINY_PRESETS = {
    "tiny-fff": dict(vocab_size=512, hidden=64, layers=2, heads=4, fff_trees=2, fff_depth=3),
    "tiny-dense": dict(vocab_size=512, hidden=64, layers=2, heads=4, feedforward="dense", ff_width=128),
}


def preset(name: str, **overrides) -> ModelConfig:
    """Returns the named preset with `overrides` applied.

    Names: crammedbert-3072, crammedbert-4095, ultrafastbert-KxD for any K >= 1, D >= 0 (1x11-long shares
    1x11's architecture), tiny-fff, tiny-dense. Case-insensitive.
    """
    key = name.lower().removesuffix("-long")
    if key in TINY_PRESETS:
        return ModelConfig(**{**TINY_PRESETS[key], **overrides})
    if key.startswith("crammedbert-") and key[len("crammedbert-") :].isdigit():
        width = int(key[len("crammedbert-") :])
        return ModelConfig(**{"feedforward": "dense", "ff_width": width, **overrides})
    match = _FFF_PRESET.fullmatch(key)
    if match:
        trees, depth = int(match[1]), int(match[2])
        return ModelConfig(**{"fff_trees": trees, "fff_depth": depth, **overrides})
    raise ValueError(
        f"unknown preset {name!r}; expected one of {PAPER_PRESETS + tuple(TINY_PRESETS)} or ultrafastbert-KxD"
    )
