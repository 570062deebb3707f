"""The encoder, MLM and GLUE heads against the float64 NumPy implementation of the original."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests import reference_numpy as ref
from tests.helpers import clear_model_input, randomise, reference_arch, route_by_bias, tokens_and_mask
from ufbert_jax import config, model, state_dict

SMALL = dict(vocab_size=61, hidden=32, layers=2, heads=4, max_len=16)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(fff_trees=1, fff_depth=3),
        dict(fff_trees=3, fff_depth=2),
        dict(feedforward="dense", ff_width=48),
    ],
    ids=["fff-1x3", "fff-3x2", "dense"],
)
@pytest.mark.parametrize("fff_impl", ["masked", "conditional"])
def test_mlm_logits_match_float64_original(rng, overrides, fff_impl):
    cfg = config.ModelConfig(**SMALL, **overrides, fff_impl=fff_impl, norm_eps=1e-5)
    mlm = model.MaskedLM(cfg, nnx.Rngs(int(rng.integers(2**31))))
    mlm.eval()
    ids, mask = clear_model_input(rng, mlm, cfg)  # randomised weights; no routing logit near a tie
    got = np.asarray(nnx.jit(lambda m, i, a: m(i, a))(mlm, ids, mask))
    expected = ref.mlm_logits(state_dict.to_state_dict(mlm), ids, mask, **reference_arch(cfg))
    assert got.shape == (*ids.shape, cfg.vocab_size)
    # FFF routing can flip for a token whose logit is within float32 rounding of 0; then that token's
    # logits differ. Draws where this happens are rare; require exactness for all but at most one token.
    token_err = np.abs(got - expected).max(axis=-1)
    assert np.sum(token_err > 1e-4) <= (1 if cfg.feedforward == "fff" else 0), token_err.max()


def test_classifier_matches_float64_original_and_padding_is_ignored(rng):
    cfg = config.ModelConfig(**SMALL, fff_trees=2, fff_depth=2, fff_impl="conditional", norm_eps=1e-5)
    clf = model.SequenceClassifier(cfg, num_labels=3, rngs=nnx.Rngs(0))
    clf.eval()
    ids, mask = clear_model_input(rng, clf, cfg)  # randomised weights; no routing logit near a tie
    got = np.asarray(clf(ids, mask))
    expected = ref.classifier_logits(state_dict.to_state_dict(clf), ids, mask, **reference_arch(cfg))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    # Changing the tokens under the padding mask leaves the first-token output (almost) unchanged: the
    # additive -10000 mask leaves exp(-10000) of weight on them.
    noisy = np.where(mask == 1, ids, rng.integers(1, cfg.vocab_size, ids.shape))
    np.testing.assert_allclose(clf(noisy, mask), got, atol=1e-5)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("ultrafastbert-1x11", 163_671_025),
        ("crammedbert-3072", 138_464_257),
        ("crammedbert-4095", 163_605_505),
    ],
)
def test_parameter_counts_match_the_paper(name, expected):
    mlm = nnx.eval_shape(lambda: model.MaskedLM(config.preset(name), nnx.Rngs(0)))
    assert model.count_params(mlm) == expected


@pytest.mark.parametrize("name", config.PAPER_PRESETS)
def test_every_paper_preset_resolves(name):
    cfg = config.preset(name)
    if cfg.feedforward == "fff":
        assert cfg.fff_trees * (2 ** (cfg.fff_depth + 1) - 1) in (
            4095,
            3072,
            4608,
            3584,
            3840,
            3968,
            4032,
            4064,
            4080,
            4088,
            4092,
            4094,
        )
    assert (cfg.hidden, cfg.layers, cfg.heads, cfg.vocab_size, cfg.max_len) == (768, 16, 12, 32768, 128)


def test_any_k_by_d_preset_and_bad_names():
    cfg = config.preset("UltraFastBERT-5x7", dropout=0.0)
    assert (cfg.fff_trees, cfg.fff_depth, cfg.fff_nodes, cfg.dropout) == (5, 7, 255, 0.0)
    assert config.preset("ultrafastbert-1x11-long") == config.preset("ultrafastbert-1x11")
    with pytest.raises(ValueError, match="unknown preset 'bert-huge'"):
        config.preset("bert-huge")
    with pytest.raises(ValueError, match="hidden=30 must be a multiple of heads=4"):
        config.ModelConfig(hidden=30, heads=4)
    with pytest.raises(ValueError, match="fff_depth=-1 must be >= 0"):
        config.ModelConfig(fff_depth=-1)


def test_the_config_and_the_math_load_no_kernel():
    # Reading a config or the FFF math must not import the Pallas kernels or the CPU custom call.
    code = (
        "import sys, ufbert_jax.config, ufbert_jax.fff_math; "
        "print(*(m for m in sys.modules if m.startswith(('ufbert_jax.kernels', 'jax.experimental.pallas'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.split() == []


def test_original_initialisation(rng):
    cfg = config.ModelConfig(**{**SMALL, "hidden": 128, "vocab_size": 1000})
    mlm = model.MaskedLM(cfg, nnx.Rngs(int(rng.integers(2**31))))
    sd = state_dict.to_state_dict(mlm)
    for key, value in sd.items():
        if key.endswith("norm.weight") or key.endswith(("norm1.weight", "norm2.weight")):
            np.testing.assert_array_equal(value, 1.0)
        elif key.endswith(".bias"):
            np.testing.assert_array_equal(value, 0.0)
        elif key.endswith("scale_factor"):
            np.testing.assert_allclose(value, [1 / np.sqrt(128)], rtol=1e-6)
        elif key.endswith("weight") and value.size > 1000:
            assert abs(value.std() - 0.02) < 0.002 and abs(value.mean()) < 0.002, key


def test_bfloat16_compute_tracks_float32_and_keeps_float32_params(rng):
    cfg = config.ModelConfig(**SMALL, fff_trees=2, fff_depth=2, fff_impl="masked", dropout=0.0)
    mlm32 = model.MaskedLM(cfg, nnx.Rngs(1))
    route_by_bias(mlm32, rng)  # bfloat16 rounding cannot flip a routing decision
    mlm16 = model.MaskedLM(cfg.replace(dtype="bfloat16"), nnx.Rngs(1))
    nnx.update(mlm16, nnx.state(mlm32, nnx.Param))
    ids, mask = tokens_and_mask(rng, cfg)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(mlm16, nnx.Param)))
    a, b = np.asarray(mlm32(ids, mask)), np.asarray(mlm16(ids, mask))
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 3e-2


def test_dropout_switches_with_train_and_eval(rng):
    cfg = config.ModelConfig(**SMALL, fff_trees=1, fff_depth=2, fff_impl="masked", dropout=0.1)
    mlm = model.MaskedLM(cfg, nnx.Rngs(0, dropout=1))
    ids, _ = tokens_and_mask(rng, cfg)
    mlm.train()
    assert not np.allclose(mlm(ids), mlm(ids))
    mlm.eval()
    np.testing.assert_array_equal(mlm(ids), mlm(ids))


def test_bad_inputs_give_clear_errors():
    cfg = config.ModelConfig(**SMALL, fff_trees=1, fff_depth=1)
    mlm = model.MaskedLM(cfg, nnx.Rngs(0))
    with pytest.raises(ValueError, match="sequence length 17 exceeds the model's max_len=16"):
        mlm(jnp.zeros((1, 17), jnp.int32))
    with pytest.raises(ValueError, match=r"token_ids must be \[B, S\]"):
        mlm(jnp.zeros((17,), jnp.int32))
    with pytest.raises(ValueError, match=r"attention_mask shape \(1, 4\) != token_ids shape \(1, 5\)"):
        mlm(jnp.zeros((1, 5), jnp.int32), jnp.ones((1, 4)))
    with pytest.raises(ValueError, match="num_labels=0 must be >= 1"):
        model.SequenceClassifier(cfg, 0, nnx.Rngs(0))


@pytest.mark.parametrize("bad", [61, -1])
def test_out_of_range_ids_are_refused_when_concrete_and_nan_under_jit(bad):
    """A direct call with concrete ids names the bad id and its position (it used to give NaN logits for
    id V and read row V-1 for id -1); traced ids follow lookup.embed's rule: the sequence's logits are
    NaN, for a negative id as for one >= V."""
    mlm = model.MaskedLM(config.ModelConfig(**SMALL, fff_trees=1, fff_depth=1), nnx.Rngs(0))
    ids = np.ones((2, 5), np.int32)
    ids[1, 3] = bad
    with pytest.raises(ValueError, match=rf"token id {bad} at \[1, 3\] is outside the vocabulary \[0, 61\)"):
        mlm(jnp.asarray(ids))
    with pytest.raises(ValueError, match=rf"token id {bad} at \[1, 3\]"):
        mlm.encoder(ids)
    logits = np.asarray(nnx.jit(lambda m, i: m(i))(mlm, jnp.asarray(ids)))  # [B, S, V]
    assert np.isfinite(logits[0]).all() and np.isnan(logits[1]).all()


def test_state_dict_round_trip_is_bit_exact(rng):
    cfg = config.ModelConfig(**SMALL, fff_trees=3, fff_depth=2)
    source = model.MaskedLM(cfg, nnx.Rngs(0))
    randomise(source, rng)
    exported = state_dict.to_state_dict(source)
    target = model.MaskedLM(cfg, nnx.Rngs(1))
    state_dict.load_state_dict(target, exported)
    again = state_dict.to_state_dict(target)
    assert exported.keys() == again.keys()
    for key in exported:
        np.testing.assert_array_equal(exported[key], again[key], err_msg=key)


def test_fully_padded_sequence_matches_float64_original(rng):
    # The additive -10000 on every key cancels in the softmax: such a sequence attends as if unmasked
    # (plain masking would make it attend uniformly instead).
    cfg = config.ModelConfig(**SMALL, feedforward="dense", ff_width=48, norm_eps=1e-5)
    mlm = model.MaskedLM(cfg, nnx.Rngs(0))
    randomise(mlm, rng)
    mlm.eval()
    ids, mask = tokens_and_mask(rng, cfg)
    mask[1] = 0  # row 0 stays whole, row 2 partly padded
    got = np.asarray(mlm(ids, mask))
    expected = ref.mlm_logits(state_dict.to_state_dict(mlm), ids, mask, **reference_arch(cfg))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_the_written_out_softmax_is_jax_dot_product_attention(rng):
    """The XLA path (and, under dropout, every path) against jax.nn.dot_product_attention, which the cuDNN
    path calls; a fully padded row included."""
    cfg = config.ModelConfig(**SMALL, dropout=0.1)
    attn = model.SelfAttention(cfg, nnx.Rngs(0))
    attn.eval()
    q, k, v = (jnp.asarray(rng.standard_normal((3, 12, cfg.heads, cfg.head_dim)), jnp.float32) for _ in "qkv")
    _, mask = tokens_and_mask(rng, cfg)
    mask[2] = 0
    keep = model.key_mask(jnp.asarray(mask))
    fused = jax.nn.dot_product_attention(
        q, k, v, mask=jnp.broadcast_to(keep[:, None, None, :], (3, 1, 12, 12)), implementation="xla"
    )
    np.testing.assert_allclose(attn._attention(q, k, v, keep), fused, atol=1e-6, rtol=1e-5)


def test_attention_impl_is_chosen_in_one_place():
    fp32, bf16 = config.ModelConfig(**SMALL), config.ModelConfig(**SMALL, dtype="bfloat16")
    assert model.resolve_attention_impl("auto", fp32, "cpu") == "xla"
    assert model.resolve_attention_impl("auto", bf16, "cpu") == "xla"
    assert model.resolve_attention_impl("auto", fp32, "gpu") == "xla"  # cuDNN flash attention: 16-bit only
    assert model.resolve_attention_impl("auto", bf16, "gpu") == "cudnn"
    assert model.resolve_attention_impl("cudnn", fp32, "cpu") == "cudnn"
    with pytest.raises(ValueError, match="unknown attention impl 'flash'"):
        model.resolve_attention_impl("flash", fp32)


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a CUDA GPU")
@pytest.mark.parametrize("feedforward", ["dense", "fff"])
def test_cudnn_attention_matches_xla_on_gpu(rng, feedforward):
    cfg = config.preset("crammedbert-3072" if feedforward == "dense" else "ultrafastbert-1x11", layers=2)
    cfg = cfg.replace(dtype="bfloat16", dropout=0.0, vocab_size=512)
    ids = rng.integers(1, cfg.vocab_size, (4, 128))
    lengths = np.array([128, 77, 1, 0])  # whole, padded, one token, fully padded
    mask = (np.arange(128)[None] < lengths[:, None]).astype(np.int32)
    outputs = {}
    for impl in ("xla", "cudnn"):
        encoder = model.Encoder(cfg.replace(attention_impl=impl), nnx.Rngs(0))  # the same weights
        outputs[impl] = np.asarray(nnx.jit(lambda e, i, m: e(i, m))(encoder, ids, mask), np.float32)
    xla, cudnn = outputs["xla"], outputs["cudnn"]
    assert np.linalg.norm(cudnn - xla) / np.linalg.norm(xla) < 2e-2
