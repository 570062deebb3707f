"""The Pallas FFF kernels against ``fff_math`` on fresh random data: the inference forward against
``conditional``, the training form's gradients against the masked form's.

``TestFffPallasGpu`` compiles the Triton kernel and runs only on a CUDA GPU; its twin
``TestFffPallasInterpret`` reruns the whole suite through Pallas' interpreter on CPU (CI).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ufbert_jax.kernels import fff_pallas, pallas_math

from tests.helpers import TOL, clear_tokens, draw_clear
from ufbert_jax import fff, fff_math

ON_GPU = jax.default_backend() == "gpu"

# (K, D, H, T, dtype): ragged token counts, K > 1, D in {0, 1, 5, 11}, H padded (24, 40) and not.
F32, BF16 = jnp.float32, jnp.bfloat16
CASES = [
    (1, 0, 16, 5, F32), (3, 1, 32, 21, BF16), (2, 5, 24, 37, F32), (2, 5, 24, 37, BF16), (1, 11, 32, 19, F32)
]  # fmt: skip
SLOW_CASES = [(1, 0, 16, 5, BF16), (3, 1, 32, 21, F32), (1, 11, 32, 19, BF16)]
# The routed kernel (one tree) with S = 4: U = D - 3 top levels from 1 to the maximum 8; T from one token to
# several tiles per subtree; H padded (24) and not.
ROUTED_CASES = [(1, 4, 16, 5, F32), (1, 5, 32, 300, BF16), (1, 6, 24, 37, F32), (1, 11, 32, 200, F32)]
# The training kernels' default cases (the rest are slow): bfloat16 with several runs per bucket, and 1x11.
TRAIN_CASES = (1, 3)
ROUTED_SLOW_CASES = [(1, 5, 32, 300, F32), (1, 11, 32, 200, BF16), (1, 8, 64, 1000, BF16)]
DEFAULT_SIZES_CASES = [(1, 11, 768, 300), (1, 11, 768, 8200), (2, 7, 40, 130), (4, 3, 128, 64)]
# Small tiles: few tokens still take several programs and every path. The routed steps take different
# hidden chunks (H is padded to the larger; the routing step loops over twice as many chunks).
Tiling = pallas_math.Tiling
PER_TOKEN = fff_pallas.BlockSizes(routed_min_tokens=None, per_token=Tiling(16, 8, hidden=16))
ROUTED = fff_pallas.BlockSizes(
    routed_min_tokens=0,
    routed_float32=True,
    sub_levels=4,
    route=Tiling(16, 4, hidden=16),
    tile=Tiling(16, 4, hidden=32, stages=3),
)
BOTH = [pytest.param(PER_TOKEN, id="per_token"), pytest.param(ROUTED, id="routed")]


def operands(rng, trees, depth, hidden, tokens, dtype):
    """(x [T, H], w_in, b_in, w_out) in `dtype` (b_in float32), every token clear of routing ties."""
    x, w_in, b_in, w_out = draw_clear(rng, trees, depth, hidden, (tokens,), dtype, dtype)
    return jnp.asarray(x, dtype), jnp.asarray(w_in, dtype), jnp.asarray(b_in), jnp.asarray(w_out, dtype)


def reference(*args):
    """fff_math.conditional at full float32 precision (XLA on GPU would use TF32 for float32 products)."""
    with jax.default_matmul_precision("highest"):
        return fff_math.conditional(*args)


def assert_close(got, want, dtype):
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.all(np.isfinite(got))
    err = np.abs(got - want).max(initial=0.0)
    assert err <= TOL[dtype] * max(1.0, np.abs(want).max(initial=0.0)), err


class TestFffPallasGpu:
    INTERPRET = False

    @pytest.fixture(autouse=True)
    def _needs_gpu(self):
        if not self.INTERPRET and not ON_GPU:
            pytest.skip("compiles the Triton kernel: needs a CUDA GPU (TestFffPallasInterpret covers CPU)")

    def kernel(self, *args, **kwargs):
        return fff_pallas.fff_pallas(*args, interpret=self.INTERPRET, **kwargs)

    @pytest.mark.parametrize(
        "trees,depth,hidden,tokens,dtype",
        [*CASES, *(pytest.param(*case, marks=pytest.mark.slow) for case in SLOW_CASES)],
    )
    def test_matches_conditional(self, rng, trees, depth, hidden, tokens, dtype):
        args = operands(rng, trees, depth, hidden, tokens, dtype)
        assert_close(self.kernel(*args, sizes=PER_TOKEN), reference(*args), dtype)

    @pytest.mark.parametrize(
        "trees,depth,hidden,tokens,dtype",
        [*ROUTED_CASES, *(pytest.param(*case, marks=pytest.mark.slow) for case in ROUTED_SLOW_CASES)],
    )
    def test_routed_matches_conditional(self, rng, trees, depth, hidden, tokens, dtype):
        args = operands(rng, trees, depth, hidden, tokens, dtype)
        assert fff_pallas.uses_routed(trees, depth, args[0].shape[0], dtype, ROUTED)
        jaxpr = str(jax.make_jaxpr(lambda *a: self.kernel(*a, sizes=ROUTED))(*args))
        assert "fff_route" in jaxpr and "fff_subtrees" in jaxpr
        assert_close(self.kernel(*args, sizes=ROUTED), reference(*args), dtype)

    def test_routed_with_every_token_in_one_subtree(self, rng):
        """Skewed routing: one subtree gets all tokens (many tiles), every other subtree none."""
        _, w_in, b_in, w_out = draw_clear(rng, 1, 6, 32, (0,))
        top_nodes = 2 ** (6 + 1 - ROUTED.sub_levels) - 1
        b_in[:, :top_nodes] = -1e3  # every top logit negative: all tokens turn left
        x = clear_tokens(rng, (150,), w_in, b_in)  # clear of ties in the subtree they now reach
        assert_close(self.kernel(x, w_in, b_in, w_out, sizes=ROUTED), reference(x, w_in, b_in, w_out), F32)

    @pytest.mark.slow
    @pytest.mark.parametrize("dtype", [F32, BF16])
    @pytest.mark.parametrize("trees,depth,hidden,tokens", DEFAULT_SIZES_CASES)
    def test_matches_conditional_default_sizes(self, rng, trees, depth, hidden, tokens, dtype):
        args = operands(rng, trees, depth, hidden, tokens, dtype)
        assert_close(self.kernel(*args), reference(*args), dtype)

    @pytest.mark.parametrize("sizes", BOTH)
    def test_jit_and_vmap(self, rng, sizes):
        x, w_in, b_in, w_out = operands(rng, 1, 5, 32, 20, jnp.float32)
        batch = jnp.stack([x, x[::-1]])  # [2, T, H]
        got = jax.jit(jax.vmap(lambda x_: self.kernel(x_, w_in, b_in, w_out, sizes=sizes)))(batch)
        assert_close(got, jax.vmap(lambda x_: reference(x_, w_in, b_in, w_out))(batch), jnp.float32)

    def train_vjp(self, args, cotangent, sizes):
        """(y, dx, dw_in, db_in, dw_out) of fff_pallas_train and of the masked form at the same point."""

        def value_and_vjp(fn):
            y, vjp = jax.vjp(fn, *args)
            return (y, *vjp(cotangent))

        train = lambda *a: fff_pallas.fff_pallas_train(*a, sizes=sizes, interpret=self.INTERPRET)  # noqa: E731
        with jax.default_matmul_precision("highest"):  # no TF32 in XLA's float32 products on a GPU
            return jax.jit(lambda: value_and_vjp(train))(), value_and_vjp(fff_math.masked)

    @pytest.mark.parametrize(
        "trees,depth,hidden,tokens,dtype",
        [
            *(ROUTED_CASES[i] for i in TRAIN_CASES),
            *(
                pytest.param(*case, marks=pytest.mark.slow)
                for i, case in enumerate(ROUTED_CASES)
                if i not in TRAIN_CASES
            ),
            *(pytest.param(*case, marks=pytest.mark.slow) for case in ROUTED_SLOW_CASES),
        ],
    )
    def test_train_gradients_equal_the_masked_form(self, rng, trees, depth, hidden, tokens, dtype):
        args = operands(rng, trees, depth, hidden, tokens, dtype)
        cotangent = rng.standard_normal(args[0].shape)
        cotangent[::3] = 0.0  # padding tokens: no cotangent
        jaxpr = str(jax.make_jaxpr(lambda *a: jax.vjp(lambda *b: fff_pallas.fff_pallas_train(
            *b, sizes=ROUTED, interpret=self.INTERPRET), *a)[1](args[0]))(*args))  # fmt: skip
        assert "fff_path_grads" in jaxpr and "fff_weight_grads" in jaxpr
        got, want = self.train_vjp(args, jnp.asarray(cotangent, dtype), ROUTED)
        for g, w in zip(got, want, strict=True):
            assert_close(g, w, dtype)

    def test_train_gradients_with_every_token_in_one_subtree(self, rng):
        """Skewed routing: one bucket takes many runs of tokens; every other bucket's rows get zero."""
        _, w_in, b_in, w_out = draw_clear(rng, 1, 6, 32, (0,))
        top_nodes = 2 ** (6 + 1 - ROUTED.sub_levels) - 1
        b_in[:, :top_nodes] = -1e3  # every top logit negative: all tokens turn left
        x = clear_tokens(rng, (150,), w_in, b_in)  # clear of ties in the subtree they now reach
        cotangent = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
        got, want = self.train_vjp((x, w_in, b_in, w_out), cotangent, ROUTED)
        for g, w in zip(got, want, strict=True):
            assert_close(g, w, jnp.float32)

    def test_train_falls_back_to_masked_where_routing_does_not_apply(self, rng):
        args = operands(rng, 2, 5, 16, 9, jnp.float32)  # K = 2
        cotangent = jnp.asarray(rng.standard_normal(args[0].shape), jnp.float32)
        got, want = self.train_vjp(args, cotangent, ROUTED)
        for g, w in zip(got, want, strict=True):
            assert_close(g, w, jnp.float32)

    def test_pallas_impl_differentiates_through_the_training_form(self, rng):
        args = operands(rng, 1, 5, 32, 40, BF16)
        grad = jax.grad(lambda *a, impl: fff.apply(*a, impl=impl).astype(F32).sum(), argnums=(0, 1, 2, 3))
        got, want = grad(*args, impl="pallas"), grad(*args, impl="masked")
        for g, w in zip(got, want, strict=True):
            assert_close(g, w, BF16)

    @pytest.mark.parametrize("sizes", BOTH)
    def test_empty_and_single_token(self, rng, sizes):
        x, w_in, b_in, w_out = operands(rng, 1, 5, 32, 3, jnp.float32)
        assert self.kernel(x[:0], w_in, b_in, w_out, sizes=sizes).shape == (0, 32)
        one = (x[:1], w_in, b_in, w_out)
        assert_close(self.kernel(*one, sizes=sizes), reference(*one), jnp.float32)

    @pytest.mark.parametrize("sizes", BOTH)
    def test_nan_token_routes_left_without_touching_others(self, rng, sizes):
        x, w_in, b_in, w_out = operands(rng, 1, 5, 32, 20, jnp.float32)
        x = x.at[3, 0].set(jnp.nan)
        got, want = self.kernel(x, w_in, b_in, w_out, sizes=sizes), reference(x, w_in, b_in, w_out)
        assert np.all(np.isnan(np.asarray(got[3])))
        assert_close(jnp.delete(got, 3, axis=0), jnp.delete(want, 3, axis=0), jnp.float32)

    def test_rejects_bad_operands(self, rng):
        x, w_in, b_in, w_out = operands(rng, 1, 2, 16, 4, jnp.float32)
        with pytest.raises(ValueError, match=r"x must be \[T, H\]"):
            self.kernel(x[None], w_in, b_in, w_out)
        with pytest.raises(ValueError, match="N = 2"):
            self.kernel(x, w_in[:, :6], b_in[:, :6], w_out[:, :6])
        with pytest.raises(ValueError, match="Tiling tokens=24 must be a power of 2"):
            Tiling(24, 8)
        with pytest.raises(ValueError, match="Tiling hidden=8 must be a power of 2 >= 16"):
            Tiling(16, 8, hidden=8)
        with pytest.raises(ValueError, match="warps >= 1 and stages >= 1"):
            Tiling(16, 8, stages=0)
        with pytest.raises(ValueError, match="sub_levels=3"):
            fff_pallas.BlockSizes(sub_levels=3)

    def test_default_sizes_choose_the_kernel_by_shape(self):
        sizes = fff_pallas.BlockSizes()
        enough = sizes.routed_min_tokens
        assert fff_pallas.uses_routed(1, 11, enough, BF16, sizes)
        assert not fff_pallas.uses_routed(1, 11, enough - 1, BF16, sizes)  # few tokens
        assert not fff_pallas.uses_routed(1, 11, enough, F32, sizes)  # float32: slow tile products
        assert fff_pallas.uses_routed(1, 11, enough, F32, dataclasses.replace(sizes, routed_float32=True))
        assert not fff_pallas.uses_routed(2, 11, enough, BF16, sizes)  # K > 1
        assert not fff_pallas.uses_routed(1, sizes.sub_levels - 1, enough, BF16, sizes)  # no top level
        assert not fff_pallas.uses_routed(1, sizes.sub_levels + 8, enough, BF16, sizes)  # > 2^8 subtrees
        never = dataclasses.replace(sizes, routed_min_tokens=None)
        assert not fff_pallas.uses_routed(1, 11, enough, BF16, never)

    def test_auto_picks_the_kernels_on_gpu(self):
        if self.INTERPRET:
            pytest.skip("'auto' dispatches to the kernels on GPU only")
        args = (jnp.ones((4, 16)), jnp.ones((1, 7, 16)), jnp.ones((1, 7)), jnp.ones((1, 7, 16)))
        assert "pallas_call" in str(jax.make_jaxpr(lambda *a: fff.apply(*a, impl="auto"))(*args))
        tokens = fff_pallas.BlockSizes().routed_min_tokens  # the 1x11 training shape: the training kernels
        shapes = [((tokens, 64), BF16), ((1, 4095, 64), BF16), ((1, 4095), F32), ((1, 4095, 64), BF16)]
        args = [jnp.ones(shape, dtype) for shape, dtype in shapes]
        grad = jax.grad(lambda *a: fff.apply(*a, impl="auto").astype(F32).sum(), argnums=(0, 1, 2, 3))
        assert "fff_weight_grads" in str(jax.make_jaxpr(grad)(*args))


class TestFffPallasInterpret(TestFffPallasGpu):
    INTERPRET = True


def test_gelu_matches_jax_far_into_the_tails(rng):
    """The kernels' erfc-based GELU (Triton has no erf) against jax.nn.gelu, tails and specials included."""
    specials = [0.0, -0.0, 1e30, -1e30, np.nan, np.inf, -np.inf]
    z = np.concatenate([rng.uniform(-12, 12, 100_000), rng.uniform(-1e4, 1e4, 1000), specials])
    z = jnp.asarray(z, jnp.float32)
    got, want = np.asarray(pallas_math.gelu(z)), np.asarray(jax.nn.gelu(z, approximate=False))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=2e-6, atol=1e-6)
    far_left = finite & (np.asarray(z) < -20)  # exactly zero, as the reference (no 1 + erf cancellation)
    assert far_left.sum() > 100 and np.all(got[far_left] == 0.0) and np.all(want[far_left] == 0.0)


def _export_for_h200(fn, tokens: int):
    """The MLIR of `fn` lowered for an H200 (Triton lowering, not compilation), on any host via jax.export.

    fn takes the 1x11 operands at H=768 (bf16, b_in float32)."""
    device = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=None, platform="cuda")
    mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
    nodes, hidden = 4095, 768
    shapes = [
        jax.ShapeDtypeStruct(shape, dtype)
        for shape, dtype in [
            ((tokens, hidden), jnp.bfloat16),
            ((1, nodes, hidden), jnp.bfloat16),
            ((1, nodes), jnp.float32),
            ((1, nodes, hidden), jnp.bfloat16),
        ]
    ]
    unchecked = [jax.export.DisabledSafetyCheck.custom_call(TRITON_CALL)]
    with jax.sharding.use_abstract_mesh(mesh):
        return jax.export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=unchecked)(
            *shapes
        ).mlir_module()


TRITON_CALL = "__gpu$xla.gpu.triton"  # no stability guarantee across jax versions: fine for a check


@pytest.mark.parametrize("tokens", [300, 8192], ids=["per_token", "routed"])
def test_lowers_for_an_h200_on_any_host(tokens):
    assert TRITON_CALL in _export_for_h200(lambda *a: fff_pallas.fff_pallas(*a, interpret=False), tokens)


def test_training_kernels_lower_for_an_h200_on_any_host():
    def grads(*args):
        loss = lambda *a: fff_pallas.fff_pallas_train(*a, interpret=False).astype(jnp.float32).sum()  # noqa: E731
        return jax.grad(loss, argnums=(0, 1, 2, 3))(*args)

    module = _export_for_h200(grads, 8192)
    assert module.count(TRITON_CALL) >= 5  # route, subtrees, path grads, weight grads, gradient rows
