"""The XLA CPU custom call against the pure-JAX conditional form and the float64 NumPy reference.

Every test draws fresh random operands (the `rng` fixture prints its seed; UFBERT_TEST_SEED replays one).
Tokens whose on-path logit is within rounding of 0 may route differently in two correct implementations,
so the draws hold none (tests.helpers.draw_clear).
"""

import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ufbert_jax.kernels import fff_cpu

from tests import reference_numpy as ref
from tests.helpers import MARGIN, TOL, draw, draw_clear, reference, unambiguous
from ufbert_jax import fff, fff_math

pytestmark = pytest.mark.skipif(not fff_cpu.is_available(), reason=fff_cpu.unavailable_reason())

kernel = jax.jit(fff_cpu.fff_cpu)
conditional = jax.jit(fff_math.conditional)


def operands(rng, trees, depth, hidden, tokens, dtype, bias_dtype=jnp.float32):
    """Fresh operands clear of routing ties: x [T, H], w_in/w_out [K, N, H] (dtype), b_in [K, N]."""
    x, w_in, b_in, w_out = draw_clear(rng, trees, depth, hidden, (tokens,), dtype, bias_dtype)
    return (
        jnp.asarray(x, dtype),
        jnp.asarray(w_in, dtype),
        jnp.asarray(b_in, bias_dtype),
        jnp.asarray(w_out, dtype),
    )


def assert_close(got, expected, dtype):
    assert got.shape == expected.shape and got.dtype == expected.dtype
    got, expected = np.asarray(got, np.float32), np.asarray(expected, np.float32)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL[dtype] * scale)


# K in {1, 3}, D in {0, 1, 5, 11}, H in {1, 7, 64, 100, 768}, T in {1, 5, 1000}: each value in several
# combinations, the 1x11 layer shape included, instead of the full product (240 compiles).
CASES = [
    (1, 0, 1, 5),
    (3, 0, 7, 1000),
    (1, 1, 64, 1),
    (3, 1, 100, 5),
    (1, 5, 7, 1000),
    (3, 5, 768, 5),
    (1, 5, 100, 1000),
    (1, 11, 768, 1000),
    (3, 11, 64, 1000),
    (1, 11, 1, 5),
]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("trees,depth,hidden,tokens", CASES)
def test_matches_conditional(rng, trees, depth, hidden, tokens, dtype):
    args = operands(rng, trees, depth, hidden, tokens, dtype)
    assert_close(kernel(*args), conditional(*args), dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("trees,depth,hidden", [(1, 11, 768), (3, 5, 100)])
def test_a_token_does_not_depend_on_the_rest_of_the_batch(rng, trees, depth, hidden, dtype):
    """Bitwise: a token's products are summed in the same order in every block of tokens it can land in
    (1 to 6 tokens per dot block, 1 to 4 per output block), so only its own operands decide its output."""
    x, w_in, b_in, w_out = operands(rng, trees, depth, hidden, 500, dtype)
    full = np.asarray(kernel(x, w_in, b_in, w_out))
    subset = rng.permutation(x.shape[0])[:173]  # other groups, other block boundaries, other order
    np.testing.assert_array_equal(kernel(x[subset], w_in, b_in, w_out), full[subset])
    np.testing.assert_array_equal(kernel(x[subset[:1]], w_in, b_in, w_out), full[subset[:1]])


@pytest.mark.parametrize("trees,depth,hidden,tokens", [(1, 0, 7, 5), (3, 5, 100, 40), (1, 11, 64, 30)])
def test_matches_float64_reference(rng, trees, depth, hidden, tokens):
    x, w_in, b_in, w_out = (np.asarray(a) for a in operands(rng, trees, depth, hidden, tokens, jnp.float32))
    expected, _, _ = reference(x, w_in, b_in, w_out)
    got = np.asarray(kernel(x, w_in, b_in, w_out), np.float64)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL[jnp.float32] * max(1, np.abs(expected).max()))


def test_bias_in_the_weights_dtype(rng):
    args = operands(rng, 2, 4, 48, 300, jnp.bfloat16, bias_dtype=jnp.bfloat16)
    assert_close(kernel(*args), conditional(*args), jnp.bfloat16)


def test_depth_zero_is_a_plain_gelu_feedforward(rng):
    """K trees of one node: gelu(x W_in^T + b) W_out, every node on the path (no routing involved)."""
    x, w_in, b_in, w_out = draw(rng, 5, 0, 33, lead=(17,))
    expected = ref.gelu(x.astype(np.float64) @ w_in[:, 0].T.astype(np.float64) + b_in[:, 0]) @ w_out[:, 0]
    np.testing.assert_allclose(kernel(x, w_in, b_in, w_out), expected, rtol=1e-5, atol=2e-5)


def test_zero_tokens_give_an_empty_result(rng):
    _, w_in, b_in, w_out = draw(rng, 2, 3, 16)
    y = kernel(jnp.zeros((0, 16)), w_in, b_in, w_out)
    assert y.shape == (0, 16) and y.dtype == jnp.float32


def test_leading_axes_through_apply(rng):
    x, w_in, b_in, w_out = draw(rng, 2, 4, 24, lead=(3, 4, 5))
    keep = reference(x, w_in, b_in, w_out)[2] > MARGIN  # [60] tokens clear of ties
    apply = jax.jit(fff.apply, static_argnames="impl")
    got, expected = apply(x, w_in, b_in, w_out, impl="cpu"), apply(x, w_in, b_in, w_out, impl="conditional")
    assert got.shape == x.shape
    assert_close(got.reshape(60, 24)[keep], expected.reshape(60, 24)[keep], jnp.float32)


def test_vmap_over_inputs_and_over_weights(rng):
    x, w_in, b_in, w_out = operands(rng, 2, 3, 16, 24, jnp.float32)
    x = x[: x.shape[0] // 6 * 6]  # near-tie tokens were dropped: keep whole rows of 6
    batched_x = x.reshape(-1, 6, 16)  # [T, H] -> [T / 6, 6, H]
    per_x = jax.jit(jax.vmap(fff_cpu.fff_cpu, (0, None, None, None)))(batched_x, w_in, b_in, w_out)
    assert_close(per_x.reshape(x.shape), kernel(x, w_in, b_in, w_out), jnp.float32)
    stacked = [jnp.stack([w, -w]) for w in (w_in, b_in, w_out)]
    per_weights = jax.jit(jax.vmap(fff_cpu.fff_cpu, (None, 0, 0, 0)))(x, *stacked)
    for i in range(2):
        np.testing.assert_array_equal(per_weights[i], kernel(x, *(s[i] for s in stacked)))
    both = jax.vmap(fff_cpu.fff_cpu)(jnp.stack([x, 2 * x]), *stacked)
    np.testing.assert_array_equal(both[1], kernel(2 * x, *(s[1] for s in stacked)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gradients_are_the_sparse_forms(rng, dtype):
    """impl="cpu" differentiates through the sparse training form (fff.with_training_vjp)."""
    args = operands(rng, 2, 4, 16, 20, dtype)
    cotangent = jnp.asarray(rng.standard_normal((args[0].shape[0], 16)), dtype)
    _, kernel_vjp = jax.vjp(lambda *a: fff.apply(*a, impl="cpu"), *args)
    _, reference_vjp = jax.vjp(fff_math.sparse, *args)
    for got, expected in zip(kernel_vjp(cotangent), reference_vjp(cotangent), strict=True):
        np.testing.assert_array_equal(got, expected)
    grad = jax.jit(
        jax.grad(lambda *a: fff.apply(*a, impl="cpu").astype(jnp.float32).sum(), argnums=(0, 1, 2, 3))
    )
    assert all(g.shape == a.shape for g, a in zip(grad(*args), args, strict=True))


def test_nan_and_inf_behave_like_the_reference(rng):
    x, w_in, b_in, w_out = operands(rng, 1, 3, 8, 12, jnp.float32)
    x, b_in = np.array(x), np.array(b_in)
    x[0, 0], x[1, 3], x[2, 5] = np.nan, np.inf, -np.inf
    b_in[0, 2] = np.nan  # every token reaching node 2 turns left there and gets a NaN output
    got, expected = np.asarray(kernel(x, w_in, b_in, w_out)), np.asarray(conditional(x, w_in, b_in, w_out))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
    assert np.isnan(got[0]).all()
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=0, atol=TOL[jnp.float32] * 10)
    infinite = np.isinf(expected)
    np.testing.assert_array_equal(np.sign(got[infinite]), np.sign(expected[infinite]))


@pytest.mark.parametrize(
    "shapes,dtypes,error,match",
    [
        (((2, 8), (1, 7, 8), (1, 7), (1, 7, 9)), None, ValueError, r"w_out must have w_in's shape"),
        (((2, 8), (1, 6, 8), (1, 6), (1, 6, 8)), None, ValueError, r"N=6"),
        (((2, 3, 8), (1, 7, 8), (1, 7), (1, 7, 8)), None, ValueError, r"x must be \[T, H\].*\(2, 3, 8\)"),
        (
            ((2, 8), (1, 7, 8), (1, 7), (1, 7, 8)),
            ("float16",) * 4,
            TypeError,
            "float32 and bfloat16; got x dtype float16",
        ),
        (
            ((2, 8), (1, 7, 8), (1, 7), (1, 7, 8)),
            ("bfloat16", "bfloat16", "float16", "bfloat16"),
            TypeError,
            "b_in must be float32 or x's dtype bfloat16; got float16",
        ),
    ],
)
def test_bad_operands_give_clear_errors(shapes, dtypes, error, match):
    dtypes = dtypes or ("float32",) * 4
    args = [jnp.zeros(s, d) for s, d in zip(shapes, dtypes, strict=True)]
    with pytest.raises(error, match=match):
        fff_cpu.fff_cpu(*args)


def raw_call(*args):
    """The custom call without the Python checks, to reach the handler's own validation."""
    out = jax.ShapeDtypeStruct(args[0].shape, args[0].dtype)
    return jax.ffi.ffi_call(fff_cpu.target(fff_cpu.isa()), out)(*args)


@pytest.mark.parametrize(
    "shapes,dtypes,match",
    [
        (((2, 8), (1, 7, 8), (1, 7), (1, 7, 9)), None, r"w_out must be \[1, 7, 8\]; got \[1, 7, 9\]"),
        (((2, 8), (1, 7, 8), (7,), (1, 7, 8)), None, r"b_in must be \[K, N\] = \[1, 7\]; got \[7\]"),
        (((2, 9), (1, 7, 8), (1, 7), (1, 7, 8)), None, r"x must be \[T, H\] with H=8; got \[2, 9\]"),
        (((2, 8), (1, 6, 8), (1, 6), (1, 6, 8)), None, r"N=6"),
        (((2, 8), (0, 7, 8), (0, 7), (0, 7, 8)), None, r"K=0"),
        (
            ((2, 8), (1, 7, 8), (1, 7), (1, 7, 8)),
            ("float16",) * 4,
            r"x must be float32 or bfloat16; got float16",
        ),
        (
            ((2, 8), (1, 7, 8), (1, 7), (1, 7, 8)),
            ("float32", "bfloat16", "float32", "float32"),
            r"w_in must have x's dtype float32; got bfloat16",
        ),
    ],
)
def test_the_handler_validates_before_touching_memory(shapes, dtypes, match):
    dtypes = dtypes or ("float32",) * 4
    args = [jnp.zeros(s, d) for s, d in zip(shapes, dtypes, strict=True)]
    with pytest.raises(Exception, match=match):  # XlaRuntimeError (INVALID_ARGUMENT)
        jax.block_until_ready(raw_call(*args))


LANES = {"avx512": 16, "avx2": 8, "portable": 1}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", fff_cpu.supported_isas())
def test_every_build_this_cpu_runs_matches_conditional(rng, monkeypatch, name, dtype):
    """$UFBERT_JAX_FFF_CPU_ISA forces a build (the AVX2 one on an AVX-512 machine): the call lowers to
    that build's target, which is compiled for its vector width, and matches the reference."""
    monkeypatch.setenv(fff_cpu.ISA_ENV, name)
    assert fff_cpu.isa() == name
    if name in LANES:
        assert fff_cpu.built_vector_width(name) == LANES[name]
    forced = jax.jit(lambda *a: fff_cpu.fff_cpu(*a))  # a fresh function: traced with the forced build
    for trees, depth, hidden, tokens in ((1, 11, 768, 600), (3, 5, 100, 300), (2, 3, 7, 50)):
        args = operands(rng, trees, depth, hidden, tokens, dtype)
        assert fff_cpu.target(name) in forced.lower(*args).as_text()
        assert_close(forced(*args), conditional(*args), dtype)


def test_the_widest_build_is_the_default_and_bad_isa_names_are_named(monkeypatch):
    monkeypatch.delenv(fff_cpu.ISA_ENV, raising=False)
    assert fff_cpu.isa() == fff_cpu.supported_isas()[0]
    monkeypatch.setenv(fff_cpu.ISA_ENV, "sse9")
    with pytest.raises(fff_cpu.BuildError, match=r"UFBERT_JAX_FFF_CPU_ISA='sse9' is not one of"):
        fff_cpu.isa()


@pytest.mark.parametrize("trees,depth", [(1, 3), (4, 2), (3, 0), (2, fff.CPU_KERNEL_MIN_DEPTH)])
def test_auto_runs_the_kernel_on_cpu_from_the_kernel_depth_on(rng, trees, depth):
    """'auto' lowers to the custom call exactly where cpu_forms names it, and equals that form's output."""
    x, w_in, b_in, w_out = draw(rng, trees, depth, 16)
    lowered = jax.jit(lambda *a: fff.apply(*a, impl="auto")).lower(x, w_in, b_in, w_out).as_text()
    kernel = depth >= fff.CPU_KERNEL_MIN_DEPTH
    assert fff.cpu_forms(trees, depth)[0] == ("cpu" if kernel else "masked")
    assert (fff_cpu.TARGET in lowered) == kernel
    expected = fff.apply(x, w_in, b_in, w_out, impl="cpu" if kernel else "masked")
    np.testing.assert_array_equal(fff.apply(x, w_in, b_in, w_out, impl="auto"), expected)


def test_missing_compiler_is_named_and_auto_falls_back(rng, monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    monkeypatch.setenv("UFBERT_JAX_CACHE", str(tmp_path))
    with pytest.raises(fff_cpu.BuildError, match=r"'/nonexistent/g\+\+' not found.*\$CXX.*install g\+\+"):
        fff_cpu._load.__wrapped__()
    reason = "the FFF CPU kernel is unavailable: C++ compiler '/nonexistent/g++' not found"
    monkeypatch.setattr(fff_cpu, "unavailable_reason", lambda: reason)
    fff._resolve.cache_clear()
    try:
        assert not fff_cpu.is_available()
        x, w_in, b_in, w_out = draw(rng, 1, fff.CPU_KERNEL_MIN_DEPTH, 8)  # a depth 'auto' runs the kernel at
        with pytest.warns(RuntimeWarning, match="falls back to 'conditional' on CPU: .*nonexistent"):
            y = fff.apply(x, w_in, b_in, w_out, impl="auto")
        np.testing.assert_array_equal(y, fff_math.conditional(x, w_in, b_in, w_out))
    finally:
        fff._resolve.cache_clear()


def test_shallow_trees_never_build_the_kernel_or_warn(rng, monkeypatch):
    """Below CPU_KERNEL_MIN_DEPTH 'auto' runs the masked form: no build is tried, so no fallback warning."""

    def no_build():
        raise AssertionError("the custom call was looked up for trees that run the masked form")

    monkeypatch.setattr(fff_cpu, "is_available", no_build)
    fff._resolve.cache_clear()
    try:
        x, w_in, b_in, w_out = draw(rng, 3, fff.CPU_KERNEL_MIN_DEPTH - 1, 8)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            y = fff.apply(x, w_in, b_in, w_out, impl="auto")
        np.testing.assert_array_equal(y, fff_math.masked(x, w_in, b_in, w_out))
    finally:
        fff._resolve.cache_clear()


def fuzz_case(data):
    """One random FFF problem from hypothesis: shapes, dtypes and value scales (mostly tiny sizes)."""
    trees = data.draw(st.integers(1, 3), label="K")
    depth = data.draw(st.integers(0, 7), label="D")
    hidden = data.draw(st.integers(1, 40), label="H")
    tokens = data.draw(st.integers(0, 40), label="T")
    dtype = data.draw(st.sampled_from([jnp.float32, jnp.bfloat16]), label="dtype")
    bias_dtype = data.draw(st.sampled_from([jnp.float32, dtype]), label="b_in dtype")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    scale = data.draw(st.sampled_from([1e-3, 1.0, 30.0]), label="x scale")
    rng = np.random.default_rng(seed)
    x, w_in, b_in, w_out = operands(rng, trees, depth, hidden, tokens, dtype, bias_dtype)
    return x * jnp.asarray(scale, dtype), w_in, b_in, w_out, dtype


def check_fuzz_case(data):
    x, w_in, b_in, w_out, dtype = fuzz_case(data)
    # Rescaling x moves logits towards or away from 0: filter the ties again at the new scale.
    as_float = [np.asarray(jnp.asarray(a).astype(jnp.float32)) for a in (x, w_in, b_in)]
    x = jnp.asarray(unambiguous(*as_float, MARGIN), dtype)
    assert_close(kernel(x, w_in, b_in, w_out), conditional(x, w_in, b_in, w_out), dtype)


@settings(max_examples=12, deadline=None)
@given(st.data())
def test_fuzz_short(data):
    check_fuzz_case(data)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_long(data):
    check_fuzz_case(data)


@pytest.mark.slow
def test_concurrent_first_builds_share_one_cache(tmp_path):
    """Two processes building into one empty cache at once both load a working library."""
    script = (
        "import jax.numpy as jnp; from ufbert_jax.kernels import fff_cpu; "
        "assert fff_cpu.is_available(), fff_cpu.unavailable_reason(); "
        "w = jnp.ones((1, 3, 4)); print(fff_cpu.fff_cpu(jnp.ones((2, 4)), w, jnp.zeros((1, 3)), w))"
    )
    env = {**os.environ, "UFBERT_JAX_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE) for _ in "ab"]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-2000:]
    assert len(list(tmp_path.glob("fff_cpu-*.so"))) == 1
    assert not list(tmp_path.glob(".*.tmp"))
