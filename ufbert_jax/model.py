"""The crammed BERT encoder of UltraFastBERT in Flax NNX, with its MLM and GLUE heads.

Shape legend: B batch, S sequence, H hidden, A heads, E head dim (H / A), V vocabulary, C classes,
K trees, N nodes per tree.

Matches the original (cramming codebase, as configured for UltraFastBERT) on purpose in every detail that
changes outputs: scaled sinusoidal positions with a learnable scalar, embedding LayerNorm, PRE-norm blocks,
one fused per-head-interleaved QKV projection without bias, scores scaled by E^-0.5, an additive
(1 - mask) * -10000 key mask (applied as the equal masking, see key_mask), exact GELU, LayerNorm eps 1e-12,
a final LayerNorm, and an MLM decoder tied to the word embedding without bias. Initialisation is the
effective one of the original: every Linear and Embedding weight ~ N(0, 0.02^2), biases 0, LayerNorm 1 / 0.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ufbert_jax import fff, fff_math, fff_variants, lookup
from ufbert_jax.config import ModelConfig

INIT_STD = 0.02
MASK_PENALTY = -10000.0
ATTENTION_IMPLS = ("auto", "xla", "cudnn")
CLASSIFIER_WIDTH = 1024

_normal = nnx.initializers.normal(INIT_STD)


def _linear(cfg: ModelConfig, d_in: int, d_out: int, rngs: nnx.Rngs, bias: bool = False) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, use_bias=bias, kernel_init=_normal, dtype=cfg.compute_dtype, rngs=rngs)


def _layer_norm(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(cfg.hidden, epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, rngs=rngs)


def sinusoidal_positions(length: int, hidden: int) -> np.ndarray:
    """[S, H] table: pe[p, 2i] = sin(p w_i), pe[p, 2i+1] = cos(p w_i), w_i = exp(-2i ln(10000) / H).

    Computed in float64, then rounded to float32 (the original builds it in float32; both agree within
    5e-6).
    """
    position = np.arange(length, dtype=np.float64)[:, None]  # [S, 1]
    frequency = np.exp(-np.arange(0, hidden, 2, dtype=np.float64) * math.log(10000.0) / hidden)
    table = np.zeros((length, hidden), np.float64)
    table[:, 0::2] = np.sin(position * frequency)
    table[:, 1::2] = np.cos(position * frequency)
    return table.astype(np.float32)


class Embedding(nnx.Module):
    """Word embedding + s * sinusoidal positions, then LayerNorm and dropout. No token types."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.word = nnx.Embed(
            cfg.vocab_size, cfg.hidden, embedding_init=_normal, dtype=cfg.compute_dtype, rngs=rngs
        )
        self.position_scale = nnx.Param(jnp.full((), 1.0 / math.sqrt(cfg.hidden), jnp.float32))
        self.norm = _layer_norm(cfg, rngs)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, token_ids: jax.Array) -> jax.Array:
        """token_ids [B, S] int -> [B, S, H].

        Concrete ids outside [0, V) are a ValueError naming the id and its position; traced ones (under
        jit) give NaN rows (lookup.embed).
        """
        seq_len = token_ids.shape[-1]
        if seq_len > self.cfg.max_len:
            raise ValueError(f"sequence length {seq_len} exceeds the model's max_len={self.cfg.max_len}")
        if not isinstance(token_ids, jax.core.Tracer):
            lookup.check_ids(np.asarray(token_ids), self.cfg.vocab_size)
        positions = jnp.asarray(sinusoidal_positions(seq_len, self.cfg.hidden))  # [S, H]
        # lookup.embed, not nnx.Embed's call: its gradient is a sorted segment sum, not a scatter-add
        words = lookup.embed(self.word.embedding[...], token_ids).astype(self.cfg.compute_dtype)  # [B,S,H]
        embedded = words + (self.position_scale[...] * positions).astype(self.cfg.compute_dtype)
        return self.dropout(self.norm(embedded))


def resolve_attention_impl(impl: str, cfg: ModelConfig, platform: str | None = None) -> str:
    """Maps ``cfg.attention_impl`` to "cudnn" or "xla"; the one place that chooses.

    "auto": cuDNN flash attention (``jax.nn.dot_product_attention(implementation="cudnn")``) on GPU for
    16-bit compute with a head dim it takes, the softmax written out for XLA everywhere else (on CPU that
    was 1.5x faster than ``dot_product_attention``'s own XLA form at 32 x 128 tokens). "xla" and "cudnn"
    force one. `platform` defaults to ``fff.resolve_platform()``: an export's target platform
    (``fff.target_platform``), else the default backend.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; expected one of {ATTENTION_IMPLS}")
    if impl != "auto":
        return impl
    platform = fff.resolve_platform(platform)
    takes = cfg.compute_dtype in (jnp.bfloat16, jnp.float16) and cfg.head_dim % 8 == 0 and cfg.head_dim <= 128
    return "cudnn" if platform == "gpu" and takes else "xla"


def key_mask(attention_mask: jax.Array) -> jax.Array:
    """attention_mask [B, S] (1 keep, 0 pad) -> [B, S] bool: the keys every query of a sequence attends to.

    The original adds (1 - mask) * -10000 to the scores. Masking the padded keys out instead is the same
    softmax: their weight exp(-10000 + ...) is exactly 0 in float32 and float64 alike, as long as a sequence
    keeps one key. A sequence with no key kept gets the same -10000 on every key, which cancels in the
    softmax: it attends as if unmasked, so here it keeps every key.
    """
    keep = attention_mask != 0  # [B, S]
    return keep | ~jnp.any(keep, axis=-1, keepdims=True)  # a fully padded sequence keeps every key


class SelfAttention(nnx.Module):
    """Multi-head self-attention with the original's fused, per-head-interleaved QKV projection.

    With cuDNN (see resolve_attention_impl) and no attention dropout it runs cuDNN flash attention; else
    the masked softmax written out for XLA, with dropout on the probabilities when dropout is active.
    """

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.query_key_value = _linear(cfg, cfg.hidden, 3 * cfg.hidden, rngs)
        self.dense = _linear(cfg, cfg.hidden, cfg.hidden, rngs)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, h: jax.Array, keep: jax.Array | None) -> jax.Array:
        """h [B, S, H]; keep [B, S] bool (see key_mask) or None -> [B, S, H]."""
        cfg = self.cfg
        batch, seq_len, _ = h.shape
        qkv = self.query_key_value(h).reshape(batch, seq_len, cfg.heads, 3 * cfg.head_dim)  # [B,S,A,3E]
        # Features h*3E + [0,E) are q of head h, + [E,2E) its k, + [2E,3E) its v.
        query, key, value = jnp.split(qkv, 3, axis=-1)  # each [B, S, A, E]
        dropout_active = self.dropout.rate > 0 and not self.dropout.deterministic
        if resolve_attention_impl(cfg.attention_impl, cfg) == "cudnn" and not dropout_active:
            # cuDNN takes the mask as [B, 1, S, S] (it refuses the [B, 1, 1, S] broadcast form).
            mask = (
                None
                if keep is None
                else jnp.broadcast_to(keep[:, None, None, :], (batch, 1, seq_len, seq_len))
            )
            context = jax.nn.dot_product_attention(
                query, key, value, mask=mask, scale=cfg.head_dim**-0.5, implementation="cudnn"
            )  # [B, S, A, E]
        else:
            context = self._attention(query, key, value, keep)
        return self.dense(context.reshape(batch, seq_len, cfg.hidden))

    def _attention(self, query, key, value, keep) -> jax.Array:
        """The masked softmax written out, dropout on the probabilities: [B, S, A, E] each -> [B, S, A, E]."""
        scores = jnp.einsum("bqae,bkae->baqk", query, key, preferred_element_type=jnp.float32)
        scores = scores * self.cfg.head_dim**-0.5  # [B, A, S, S]
        if keep is not None:  # the original's additive form: XLA fuses an add into the product, not a select
            scores = scores + jnp.where(keep, 0.0, MASK_PENALTY)[:, None, None, :]
        probs = self.dropout(jax.nn.softmax(scores, axis=-1)).astype(self.cfg.compute_dtype)
        return jnp.einsum("baqk,bkae->bqae", probs, value)


class DenseFeedForward(nnx.Module):
    """crammedBERT's feedforward as configured for UltraFastBERT: Linear, exact GELU, Linear; no biases."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.dense_in = _linear(cfg, cfg.hidden, cfg.ff_width, rngs)
        self.dense_out = _linear(cfg, cfg.ff_width, cfg.hidden, rngs)

    def __call__(self, h: jax.Array) -> jax.Array:
        """[B, S, H] -> [B, S, H]."""
        return self.dense_out(fff_math.gelu(self.dense_in(h)))


class FastFeedForward(nnx.Module):
    """The FFF feedforward: K trees of depth D, run by fff.apply (ufbert_jax.fff_math has the math).

    Parameters in the tree-major heap layout: w_in, w_out [K, N, H], b_in [K, N] (no output bias). A config
    that asks for an FFF variant (soft routing, hardening loss, transpositions) adds a fff_variants.Variant,
    which runs in place of fff.apply; the default config has none.
    """

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.impl = cfg.fff_impl
        self.dtype = cfg.compute_dtype
        shape = (cfg.fff_trees, cfg.fff_nodes, cfg.hidden)
        self.w_in = nnx.Param(_normal(rngs.params(), shape, jnp.float32))
        self.b_in = nnx.Param(jnp.zeros(shape[:2], jnp.float32))
        self.w_out = nnx.Param(_normal(rngs.params(), shape, jnp.float32))
        self.variant = fff_variants.Variant(cfg, rngs) if fff_variants.wanted(cfg) else None

    def __call__(self, h: jax.Array) -> jax.Array:
        """[B, S, H] -> [B, S, H]."""
        operands = (
            h.astype(self.dtype),
            self.w_in[...].astype(self.dtype),
            self.b_in[...],
            self.w_out[...].astype(self.dtype),
        )
        if self.variant is None:
            return fff.apply(*operands, impl=self.impl)
        return self.variant(*operands, impl=self.impl)


class Block(nnx.Module):
    """Pre-norm transformer layer: h + drop(attn(LN1 h)), then h + drop(ffn(LN2 h))."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.norm1 = _layer_norm(cfg, rngs)
        self.attn = SelfAttention(cfg, rngs)
        self.norm2 = _layer_norm(cfg, rngs)
        feedforward = FastFeedForward if cfg.feedforward == "fff" else DenseFeedForward
        self.ffn = feedforward(cfg, rngs)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, h: jax.Array, keep: jax.Array | None) -> jax.Array:
        """h [B, S, H]; keep [B, S] bool (see key_mask) or None -> [B, S, H]."""
        h = h + self.dropout(self.attn(self.norm1(h), keep))
        return h + self.dropout(self.ffn(self.norm2(h)))


class Encoder(nnx.Module):
    """Embedding, the stack of blocks, final LayerNorm."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embedding = Embedding(cfg, rngs)
        self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.layers)])
        self.final_norm = _layer_norm(cfg, rngs)

    def __call__(self, token_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """token_ids [B, S]; attention_mask [B, S] (1 keep, 0 pad) or None -> hidden states [B, S, H]."""
        if token_ids.ndim != 2:
            raise ValueError(f"token_ids must be [B, S]; got shape {tuple(token_ids.shape)}")
        keep = None
        if attention_mask is not None:
            if attention_mask.shape != token_ids.shape:
                raise ValueError(
                    f"attention_mask shape {tuple(attention_mask.shape)} != token_ids shape "
                    f"{tuple(token_ids.shape)}"
                )
            keep = key_mask(attention_mask)  # [B, S]
        h = self.embedding(token_ids)
        for layer in self.layers:
            h = layer(h, keep)
        return self.final_norm(h)


class MaskedLM(nnx.Module):
    """Encoder + MLM decoder tied to the word embedding, without bias and without a head transform."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoder = Encoder(cfg, rngs)

    def decode(self, hidden: jax.Array) -> jax.Array:
        """[..., H] -> [..., V] float32 logits (apply to the masked positions only for sparse prediction)."""
        word = self.encoder.embedding.word.embedding[...].astype(self.cfg.compute_dtype)  # [V, H]
        return jnp.einsum("...h,vh->...v", hidden, word, preferred_element_type=jnp.float32)

    def __call__(self, token_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """token_ids [B, S] -> logits [B, S, V]."""
        return self.decode(self.encoder(token_ids, attention_mask))


class SequenceClassifier(nnx.Module):
    """GLUE head: first token -> Linear(H, 1024) -> tanh -> dropout -> Linear(1024, C). C=1 regresses."""

    def __init__(self, cfg: ModelConfig, num_labels: int, rngs: nnx.Rngs):
        if num_labels < 1:
            raise ValueError(f"num_labels={num_labels} must be >= 1")
        self.cfg = cfg
        self.encoder = Encoder(cfg, rngs)
        self.pooler = _linear(cfg, cfg.hidden, CLASSIFIER_WIDTH, rngs, bias=True)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.head = _linear(cfg, CLASSIFIER_WIDTH, num_labels, rngs, bias=True)

    def __call__(self, token_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """token_ids [B, S] -> [B, C] float32 logits (or [B, 1] regression scores)."""
        first = self.encoder(token_ids, attention_mask)[:, 0]  # [B, H]
        pooled = self.dropout(jnp.tanh(self.pooler(first)))
        return self.head(pooled).astype(jnp.float32)


def count_params(module: nnx.Module) -> int:
    """Number of parameter scalars (the tied decoder counted once, as it is one array)."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
