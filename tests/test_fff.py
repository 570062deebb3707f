"""The FFF math against the float64 NumPy reference: masked, conditional, sparse, paths, gradients, errors."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import reference_numpy as ref
from tests.helpers import MARGIN, TOL, draw, draw_clear, reference
from ufbert_jax import fff, fff_math


@pytest.mark.parametrize("impl", ["masked", "conditional", "sparse"])
@pytest.mark.parametrize("trees,depth,hidden", [(1, 0, 8), (1, 3, 16), (3, 2, 32), (2, 5, 24), (1, 11, 16)])
def test_matches_float64_reference(rng, impl, trees, depth, hidden):
    x, w_in, b_in, w_out = draw_clear(rng, trees, depth, hidden, lead=(3, 11))
    expected, _, path_margin = reference(x, w_in, b_in, w_out)
    got = np.asarray(jax.jit(fff.apply, static_argnames="impl")(x, w_in, b_in, w_out, impl=impl))
    assert got.shape == x.shape
    keep = path_margin > MARGIN
    assert keep.sum() > 0.8 * keep.size
    err = np.abs(got.reshape(-1, hidden)[keep] - expected[keep]).max()
    assert err <= TOL[jnp.float32] * max(1.0, np.abs(expected).max()), err


COMBOS = [
    (trees, depth, hidden, dtype, lead)
    for (trees, depth, hidden), dtype, lead in itertools.product(
        [(1, 0, 16), (1, 1, 32), (4, 3, 16), (2, 6, 64), (1, 11, 32)],
        [jnp.float32, jnp.bfloat16],
        [(5,), (2, 9), (1, 3, 4)],
    )
]


def masked_and(impl, args, cotangent):
    """(y, dx, dw_in, db_in, dw_out) of the masked form and of `impl` at the same point."""

    def value_and_vjp(name):
        y, vjp = jax.vjp(lambda *a: fff.apply(*a, impl=name), *args)
        return (y, *vjp(cotangent))

    return jax.jit(lambda: value_and_vjp("masked"))(), jax.jit(lambda: value_and_vjp(impl))()


def assert_equal_to_rounding(masked, other, dtype):
    for name, a, b in zip(["y", "dx", "dw_in", "db_in", "dw_out"], masked, other, strict=True):
        assert a.dtype == b.dtype, name
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        scale = max(1.0, np.abs(a).max())
        assert np.abs(a - b).max() <= TOL[dtype] * scale, (name, np.abs(a - b).max())


@pytest.mark.parametrize("impl", ["conditional", pytest.param("sparse", marks=pytest.mark.slow)])
@pytest.mark.parametrize("trees,depth,hidden,dtype,lead", COMBOS)
def test_outputs_and_gradients_equal_the_masked_form(rng, impl, trees, depth, hidden, dtype, lead):
    # The values the dtype can hold, so that the float64 routing check sees what the kernels see.
    x, w_in, b_in, w_out = draw_clear(rng, trees, depth, hidden, lead, dtype, dtype)
    args = (jnp.asarray(x, dtype), jnp.asarray(w_in, dtype), jnp.asarray(b_in), jnp.asarray(w_out, dtype))
    cotangent = jnp.asarray(rng.standard_normal(x.shape), dtype)
    assert_equal_to_rounding(*masked_and(impl, args, cotangent), dtype)


# K in {1, 2, 4}, D in {0, 1, 5, 11}, both dtypes; T ragged (1, 6 or 37 tokens, in turn).
SPARSE_COMBOS = [
    (trees, depth, dtype, (1, 6, 37)[i % 3])
    for i, (trees, depth, dtype) in enumerate(
        itertools.product([1, 2, 4], [0, 1, 5, 11], [jnp.float32, jnp.bfloat16])
    )
]


@pytest.mark.parametrize("trees,depth,dtype,tokens", SPARSE_COMBOS)
def test_sparse_gradients_equal_masked_with_padding_tokens(rng, trees, depth, dtype, tokens):
    """Padded positions (their cotangent rows zero, as a loss that ignores them gives) and ragged T."""
    x, w_in, b_in, w_out = draw_clear(rng, trees, depth, 24, (tokens,), dtype, dtype)
    args = (jnp.asarray(x, dtype), jnp.asarray(w_in, dtype), jnp.asarray(b_in), jnp.asarray(w_out, dtype))
    cotangent = rng.standard_normal(x.shape)
    cotangent[len(x) // 2 :] = 0.0  # the second half of the tokens are padding
    assert_equal_to_rounding(*masked_and("sparse", args, jnp.asarray(cotangent, dtype)), dtype)


def test_path_vjp_equals_the_float64_reference_gradients(rng):
    """path_vjp against gradients written out in float64 NumPy from the path (an independent derivation)."""
    x, w_in, b_in, w_out = draw_clear(rng, 2, 4, 12, lead=(40,))
    g = rng.standard_normal(x.shape)
    _, visited, _ = reference(x, w_in, b_in, w_out)
    _, nodes, logits = fff_math.conditional_with_path(x, w_in, b_in, w_out)
    grads = fff_math.path_vjp(x, w_in, b_in, w_out, nodes, logits, jnp.asarray(g, jnp.float32))
    x64, w_in64, b_in64, w_out64 = (np.asarray(a, np.float64) for a in (x, w_in, b_in, w_out))
    want = [np.zeros_like(x64), np.zeros_like(w_in64), np.zeros_like(b_in64), np.zeros_like(w_out64)]
    for t, k, level in itertools.product(range(len(x)), range(w_in.shape[0]), range(visited.shape[-1])):
        n = visited[t, k, level]
        z = x64[t] @ w_in64[k, n] + b_in64[k, n]
        dz = (g[t] @ w_out64[k, n]) * (
            0.5 * math.erfc(-z / math.sqrt(2)) + z * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
        )
        want[0][t] += dz * w_in64[k, n]
        want[1][k, n] += dz * x64[t]
        want[2][k, n] += dz
        want[3][k, n] += ref.gelu(z) * g[t]
    for got, expected in zip(grads, want, strict=True):
        np.testing.assert_allclose(np.asarray(got), expected, rtol=2e-5, atol=2e-5 * np.abs(expected).max())


@pytest.mark.parametrize("impl", ["masked", "conditional", "sparse", "auto"])
def test_gradients_match_float64_finite_differences(rng, impl):
    """jax.grad of sum(y * c) equals the float64 reference's central differences (routing held fixed)."""
    x, w_in, b_in, w_out = draw_clear(rng, 2, 3, 8, lead=(4,), margin=0.05)  # finite differences of 1e-4
    c = rng.standard_normal(x.shape)

    def loss64(x_, w_in_, b_in_, w_out_):
        return float((reference(x_, w_in_, b_in_, w_out_)[0] * c).sum())

    grads = jax.grad(
        lambda *a: (fff.apply(*a, impl=impl) * c.astype(np.float32)).sum(), argnums=(0, 1, 2, 3)
    )(x, w_in, b_in, w_out)
    args = [np.asarray(a, np.float64) for a in (x, w_in, b_in, w_out)]
    eps = 1e-4
    for which, grad in enumerate(grads):
        flat_index = rng.choice(args[which].size, size=6, replace=False)
        for i in flat_index:
            bumped = [a.copy() for a in args]
            bumped[which].reshape(-1)[i] += eps
            up = loss64(*bumped)
            bumped[which].reshape(-1)[i] -= 2 * eps
            numeric = (up - loss64(*bumped)) / (2 * eps)
            assert abs(float(np.asarray(grad).reshape(-1)[i]) - numeric) < 1e-3 * max(1, abs(numeric))


@pytest.mark.parametrize("impl", ["masked", "conditional", "sparse", "auto"])
def test_off_path_nodes_get_exactly_zero_gradient(rng, impl):
    x, w_in, b_in, w_out = draw_clear(rng, 2, 4, 16, lead=(3,))
    _, visited, _ = reference(x, w_in, b_in, w_out)
    on_path = np.zeros(b_in.shape, bool)
    for k in range(w_in.shape[0]):
        on_path[k, np.unique(visited[:, k])] = True
    grads = jax.grad(lambda *a: fff.apply(*a, impl=impl).sum(), argnums=(1, 2, 3))(x, w_in, b_in, w_out)
    for grad in grads:
        grad = np.asarray(grad).reshape(*on_path.shape, -1)
        assert np.all(grad[~on_path] == 0.0)
        assert np.all(np.abs(grad[on_path]).max(axis=-1) > 0)


@pytest.mark.parametrize("trees,depth", [(1, 0), (1, 4), (3, 3), (2, 11)])
def test_paths_are_root_to_leaf_chains_matching_reference(rng, trees, depth):
    x, w_in, b_in, w_out = draw_clear(rng, trees, depth, 16, lead=(4, 5))
    path = np.asarray(fff.paths(x, w_in, b_in))
    assert path.shape == (4, 5, trees, depth + 1) and path.dtype == np.int32
    assert np.all(path[..., 0] == 0)
    step = path[..., 1:] - 2 * path[..., :-1]
    assert np.all((step == 1) | (step == 2))
    assert np.all((path[..., -1] >= 2**depth - 1) & (path[..., -1] < 2 ** (depth + 1) - 1))
    _, visited, path_margin = reference(x, w_in, b_in, w_out)
    keep = path_margin > MARGIN
    np.testing.assert_array_equal(path.reshape(-1, trees, depth + 1)[keep], visited[keep])


def test_depth_zero_is_a_plain_gelu_feedforward_with_input_bias(rng):
    x, w_in, b_in, w_out = draw(rng, 6, 0, 16, lead=(10,))
    # K trees of one node = a dense GELU FF of width K: gelu(x W_in^T + b) W_out, no output bias.
    hidden = x.astype(np.float64) @ w_in[:, 0].T.astype(np.float64) + b_in[:, 0]
    expected = ref.gelu(hidden) @ w_out[:, 0].astype(np.float64)
    for impl in ("masked", "conditional", "sparse"):
        np.testing.assert_allclose(fff.apply(x, w_in, b_in, w_out, impl=impl), expected, atol=2e-5, rtol=1e-5)


def test_zero_and_nan_logits_route_left_positive_right(rng):
    x, w_in, b_in, _ = draw(rng, 1, 3, 8, lead=(4,))
    x[0, 0] = np.nan
    x[1:] = 0.0  # logit = bias exactly
    b_in[0] = 0.0
    path = np.asarray(fff.paths(x, w_in, b_in))
    np.testing.assert_array_equal(path[0, 0], [0, 1, 3, 7])  # NaN: z > 0 is false
    np.testing.assert_array_equal(path[1, 0], [0, 1, 3, 7])  # z == 0 goes left (strict >)
    b_in[0, [0, 2]] = 1e-30  # the smallest positive logits go right
    np.testing.assert_array_equal(fff.paths(x, w_in, b_in)[1, 0], [0, 2, 6, 13])


def test_jit_and_vmap_over_inputs_and_weights(rng):
    x, w_in, b_in, w_out = draw_clear(rng, 2, 3, 16, lead=(4, 6))
    for impl in ("masked", "conditional", "sparse", "auto"):
        apply = jax.jit(lambda *a, impl=impl: fff.apply(*a, impl=impl))
        expected = apply(x, w_in, b_in, w_out)
        np.testing.assert_allclose(
            jax.vmap(apply, (0, None, None, None))(x, w_in, b_in, w_out), expected, rtol=1e-5, atol=1e-5
        )
        stacked = [np.stack([w, 2 * w]) for w in (w_in, b_in, w_out)]
        per_weights = jax.vmap(apply, (None, 0, 0, 0))(x, *stacked)
        np.testing.assert_allclose(per_weights[0], expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(per_weights[1], apply(x, *(s[1] for s in stacked)), rtol=1e-5, atol=1e-5)


def test_per_example_gradients_under_vmap_equal_masked(rng):
    x, w_in, b_in, w_out = draw_clear(rng, 2, 3, 16, lead=(4, 6))  # [B, T, H]

    def per_example(impl):
        loss = lambda x_, *w: (fff.apply(x_, *w, impl=impl) ** 2).sum()  # noqa: E731
        return jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1, 2, 3)), (0, None, None, None)))(
            x, w_in, b_in, w_out
        )

    for a, b in zip(per_example("masked"), per_example("sparse"), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * np.abs(np.asarray(a)).max())


@pytest.mark.parametrize("depth,form", [(3, "masked"), (fff.CPU_SPARSE_MIN_DEPTH, "sparse")])
def test_auto_differentiates_through_the_platforms_training_form(rng, depth, form):
    """On CPU, 'auto' under jax.grad is the sparse form for deep trees, the masked form for shallow ones."""
    x, w_in, b_in, w_out = draw_clear(rng, 2, depth, 16, lead=(9,))
    grad = jax.grad(lambda *a, impl: fff.apply(*a, impl=impl).sum(), argnums=(0, 1, 2, 3))
    for a, b in zip(
        grad(x, w_in, b_in, w_out, impl="auto"), grad(x, w_in, b_in, w_out, impl=form), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_cpu_forms_of_the_paper_rows():
    """The CPU rule on the paper's rows: custom call from depth 3, sparse training from depth 7."""
    rows = [(3072, 0), (1536, 1), (512, 2), (256, 3), (128, 4), (64, 5), (32, 6), (16, 7), (8, 8), (1, 11)]
    got = {f"{k}x{d}": fff.cpu_forms(k, d) for k, d in rows}
    assert {row for row, (inference, _) in got.items() if inference == "cpu"} == {
        "256x3", "128x4", "64x5", "32x6", "16x7", "8x8", "1x11"
    }  # fmt: skip
    assert {row for row, (_, training) in got.items() if training == "sparse"} == {"16x7", "8x8", "1x11"}
    assert set(got.values()) <= {("masked", "masked"), ("cpu", "masked"), ("cpu", "sparse")}
    with pytest.raises(ValueError, match="trees=0"):
        fff.cpu_forms(0, 3)
    with pytest.raises(ValueError, match="depth=-1"):
        fff.cpu_forms(1, -1)


@pytest.mark.parametrize("nodes", [0, 2, 4, 5, 6, 8, 14, 16, 4096])
def test_bad_node_count_is_named(nodes):
    w = jnp.zeros((1, nodes, 8))
    with pytest.raises(ValueError, match=f"N={nodes}"):
        fff.apply(jnp.zeros((2, 8)), w, jnp.zeros((1, nodes)), w, impl="masked")


@pytest.mark.parametrize(
    "shapes,error,match",
    [
        (((2, 8), (1, 7, 8), (1, 7), (1, 7, 9)), ValueError, r"w_out must have w_in's shape"),
        (((2, 8), (1, 7, 8), (7,), (1, 7, 8)), ValueError, r"b_in must be \[K, N\] = \(1, 7\)"),
        (((2, 9), (1, 7, 8), (1, 7), (1, 7, 8)), ValueError, r"H=8; got shape \(2, 9\)"),
        (((2, 8), (7, 8), (1, 7), (7, 8)), ValueError, r"w_in must be \[K, N, H\]"),
    ],
)
def test_bad_shapes_give_clear_errors(shapes, error, match):
    x, w_in, b_in, w_out = (jnp.zeros(s) for s in shapes)
    with pytest.raises(error, match=match):
        fff.apply(x, w_in, b_in, w_out, impl="masked")


def test_bad_dtypes_and_impl_give_clear_errors():
    w = jnp.zeros((1, 3, 8))
    with pytest.raises(TypeError, match="share one dtype; got bfloat16, float32, float32"):
        fff.apply(jnp.zeros((2, 8), jnp.bfloat16), w, jnp.zeros((1, 3)), w)
    with pytest.raises(TypeError, match="x must be floating point; got dtype int32"):
        fff.apply(jnp.zeros((2, 8), jnp.int32), w, jnp.zeros((1, 3)), w)
    with pytest.raises(ValueError, match="unknown FFF impl 'fast'"):
        fff.apply(jnp.zeros((2, 8)), w, jnp.zeros((1, 3)), w, impl="fast")


def _forms_on_this_host() -> list[str]:
    """Every FFF implementation that runs on this host (the CPU custom call where it builds)."""
    from ufbert_jax.kernels import fff_cpu

    forms = ["masked", "conditional", "sparse", "auto"]
    return forms + (["cpu"] if jax.default_backend() == "cpu" and fff_cpu.is_available() else [])


@pytest.mark.parametrize("part", ["w_in", "b_in", "w_out", "w_out entry"])
def test_a_non_finite_leaf_reaches_only_the_tokens_that_visit_it(rng, part):
    """A node off a token's path never changes that token's output, in every form: NaN weights of one leaf
    give NaN exactly in the tokens whose path ends there (the masked form used to give NaN everywhere)."""
    x, w_in, b_in, w_out = draw_clear(rng, 2, 3, 16, lead=(40,))
    _, visited, _ = reference(x, w_in, b_in, w_out)
    leaves, counts = np.unique(visited[:, 1, -1], return_counts=True)
    leaf = int(leaves[np.argmax(counts)])  # the leaf of tree 1 that most tokens reach: some do, some not
    if part == "w_in":
        w_in[1, leaf] = np.nan
    elif part == "b_in":
        b_in[1, leaf] = np.nan
    elif part == "w_out":
        w_out[1, leaf] = np.nan
    else:
        w_out[1, leaf, 5] = np.inf
    reaches = visited[:, 1, -1] == leaf  # [T]
    assert 0 < reaches.sum() < len(reaches)
    for impl in _forms_on_this_host():
        y = np.asarray(fff.apply(x, w_in, b_in, w_out, impl=impl))
        np.testing.assert_array_equal(~np.isfinite(y).all(axis=-1), reaches, err_msg=impl)
        assert np.isfinite(y[~reaches]).all(), impl
