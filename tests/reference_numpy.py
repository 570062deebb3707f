"""An independent float64 NumPy implementation of the ORIGINAL UltraFastBERT, from docs/architecture.md.

It reads a state dict with the original PyTorch key names and layouts (Linear weights [out, in], FFF rows
tree-major in one [K*N, H] matrix, the fused QKV per-head interleaved) and shares no code with ufbert_jax.
Used as the ground truth for the FFF layer, the encoder and the checkpoint converter.
"""

from __future__ import annotations

import math

import numpy as np

_ERF = np.vectorize(math.erf, otypes=[np.float64])


def gelu(z: np.ndarray) -> np.ndarray:
    """Exact GELU: z * Phi(z)."""
    z = np.asarray(z, np.float64)
    return 0.5 * z * (1.0 + _ERF(z / math.sqrt(2.0)))


def fff_forward(x, linear_in_weight, linear_in_bias, linear_out_weight, trees, margins=None):
    """FFF layer token by token, walking each tree with an explicit loop.

    x [T, H]; linear_in_weight [K*N, H]; linear_in_bias [K*N]; linear_out_weight [H, K*N] -> ([T, H],
    visited node ids [T, K, D+1]). margins: an optional list that receives |logit| of every routing
    decision, so a test can tell when float32 rounding could flip a branch.
    """
    x = np.asarray(x, np.float64)
    w_in = np.asarray(linear_in_weight, np.float64)
    b_in = np.asarray(linear_in_bias, np.float64)
    w_out = np.asarray(linear_out_weight, np.float64)
    nodes = w_in.shape[0] // trees
    depth = round(math.log2(nodes + 1)) - 1
    out = np.zeros_like(x)
    visited = np.zeros((x.shape[0], trees, depth + 1), np.int64)
    for t in range(x.shape[0]):
        for k in range(trees):
            node = 0
            for level in range(depth + 1):
                row = k * nodes + node
                logit = x[t] @ w_in[row] + b_in[row]
                out[t] += gelu(logit) * w_out[:, row]
                visited[t, k, level] = node
                if margins is not None and level < depth:
                    margins.append(abs(logit))
                node = 2 * node + 2 if logit > 0 else 2 * node + 1
    return out, visited


def _layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _positions(seq_len, hidden):
    pe = np.zeros((seq_len, hidden))
    for p in range(seq_len):
        for i in range(hidden // 2):
            w = math.exp(-(2 * i) * math.log(10000.0) / hidden)
            pe[p, 2 * i] = math.sin(p * w)
            pe[p, 2 * i + 1] = math.cos(p * w)
    return pe


def _softmax(s):
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


def encoder_forward(sd, token_ids, attention_mask, *, layers, heads, trees=None, eps=1e-12, margins=None):
    """Final hidden states [B, S, H] of the original crammed BERT encoder (pre-norm, no dropout).

    sd: original state dict (numpy arrays). token_ids [B, S]; attention_mask [B, S] (1 keep) or None.
    trees: K for an FFF feedforward (keys ffn.linear_in/linear_out); None for the dense one (dense_in/out).
    margins: optional list collecting |logit| of every FFF routing decision (see fff_forward).
    """
    g = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    p = "encoder."
    batch, seq_len = token_ids.shape
    hidden = g[p + "embedding.word_embedding.weight"].shape[1]
    head_dim = hidden // heads
    h = g[p + "embedding.word_embedding.weight"][token_ids]
    h = h + g[p + "embedding.pos_embedding.scale_factor"].reshape(()) * _positions(seq_len, hidden)
    h = _layer_norm(h, g[p + "embedding.norm.weight"], g[p + "embedding.norm.bias"], eps)
    mask_bias = 0.0
    if attention_mask is not None:
        mask_bias = (1.0 - np.asarray(attention_mask, np.float64))[:, None, None, :] * -10000.0
    for i in range(layers):
        q = f"{p}layers.{i}."
        a = _layer_norm(h, g[q + "norm1.weight"], g[q + "norm1.bias"], eps)
        qkv = a @ g[q + "attn.self_attention.query_key_value.weight"].T  # [B, S, 3H]
        qkv = qkv.reshape(batch, seq_len, heads, 3 * head_dim)
        qh, kh, vh = (qkv[..., j * head_dim : (j + 1) * head_dim] for j in range(3))
        norm_factor = g[q + "attn.self_attention.norm_factor"].reshape(())
        scores = np.einsum("bqae,bkae->baqk", qh, kh) * norm_factor + mask_bias
        context = np.einsum("baqk,bkae->bqae", _softmax(scores), vh).reshape(batch, seq_len, hidden)
        h = h + context @ g[q + "attn.dense.weight"].T
        f = _layer_norm(h, g[q + "norm2.weight"], g[q + "norm2.bias"], eps)
        if trees is None:
            ff = gelu(f @ g[q + "ffn.dense_in.weight"].T) @ g[q + "ffn.dense_out.weight"].T
        else:
            flat, _ = fff_forward(
                f.reshape(-1, hidden),
                g[q + "ffn.linear_in.weight"],
                g[q + "ffn.linear_in.bias"],
                g[q + "ffn.linear_out.weight"],
                trees,
                margins,
            )
            ff = flat.reshape(batch, seq_len, hidden)
        h = h + ff
    return _layer_norm(h, g[p + "final_norm.weight"], g[p + "final_norm.bias"], eps)


def mlm_logits(sd, token_ids, attention_mask, **arch):
    """MLM logits [B, S, V] with the decoder.weight copy (the one the original loads last)."""
    hidden = encoder_forward(sd, token_ids, attention_mask, **arch)
    return hidden @ np.asarray(sd["decoder.weight"], np.float64).T


def classifier_logits(sd, token_ids, attention_mask, **arch):
    """GLUE head [B, C]: first token -> pooler.dense -> tanh -> head (dropout off)."""
    hidden = encoder_forward(sd, token_ids, attention_mask, **arch)[:, 0]
    g = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    pooled = np.tanh(hidden @ g["pooler.dense.weight"].T + g["pooler.dense.bias"])
    return pooled @ g["head.weight"].T + g["head.bias"]
