"""The Pallas FFF kernel against ``fff.conditional`` on fresh random data.

``TestFffPallasGpu`` compiles the Triton kernel and runs only on a CUDA GPU; its twin
``TestFffPallasInterpret`` reruns the whole suite through Pallas' interpreter on CPU (CI).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ufbert_jax.kernels import fff_pallas

from tests.test_fff import TOL, draw, unambiguous
from ufbert_jax import fff

ON_GPU = jax.default_backend() == "gpu"

# (K, D, H, T, dtype): ragged token counts, K > 1, D in {0, 1, 5, 11}, H padded (24, 40) and not.
F32, BF16 = jnp.float32, jnp.bfloat16
CASES = [
    (1, 0, 16, 5, F32), (3, 1, 32, 21, BF16), (2, 5, 24, 37, F32), (2, 5, 24, 37, BF16), (1, 11, 32, 19, F32)
]  # fmt: skip
SLOW_CASES = [(1, 0, 16, 5, BF16), (3, 1, 32, 21, F32), (1, 11, 32, 19, BF16)]
DEFAULT_SIZES_CASES = [(1, 11, 768, 300), (2, 7, 40, 130), (4, 3, 128, 64)]
# Small tiles, dense top levels and an early sort: few tokens still take several programs and every path.
SMALL = fff_pallas.BlockSizes(
    block_tokens=16, block_hidden=16, dense_levels=7, sort_levels=7, sort_min_tokens=16
)


def operands(rng, trees, depth, hidden, tokens, dtype):
    """(x [T', H], w_in, b_in, w_out) in `dtype` (b_in float32), tokens near a routing tie removed."""
    # The values the dtype can hold, so that the float64 routing check sees what the kernel sees.
    drawn = draw(rng, trees, depth, hidden, lead=(tokens,))
    x, w_in, b_in, w_out = (a.astype(dtype).astype(np.float32) for a in drawn)
    x = unambiguous(x, w_in, b_in)
    return jnp.asarray(x, dtype), jnp.asarray(w_in, dtype), jnp.asarray(b_in), jnp.asarray(w_out, dtype)


def reference(*args):
    """fff.conditional at full float32 precision (XLA on GPU would use TF32 for float32 products)."""
    with jax.default_matmul_precision("highest"):
        return fff.conditional(*args)


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
        assert_close(self.kernel(*args, sizes=SMALL), reference(*args), dtype)

    @pytest.mark.slow
    @pytest.mark.parametrize("dtype", [F32, BF16])
    @pytest.mark.parametrize("trees,depth,hidden,tokens", DEFAULT_SIZES_CASES)
    def test_matches_conditional_default_sizes(self, rng, trees, depth, hidden, tokens, dtype):
        args = operands(rng, trees, depth, hidden, tokens, dtype)
        assert_close(self.kernel(*args), reference(*args), dtype)

    def test_jit_and_vmap(self, rng):
        x, w_in, b_in, w_out = operands(rng, 1, 4, 32, 20, jnp.float32)
        batch = jnp.stack([x, x[::-1]])  # [2, T, H]
        got = jax.jit(jax.vmap(lambda x_: self.kernel(x_, w_in, b_in, w_out, sizes=SMALL)))(batch)
        assert_close(got, jax.vmap(lambda x_: reference(x_, w_in, b_in, w_out))(batch), jnp.float32)

    def test_gradient_equals_conditional_vjp(self, rng):
        args = operands(rng, 2, 4, 16, 9, jnp.float32)
        cotangent = jnp.asarray(rng.standard_normal(args[0].shape), jnp.float32)
        y, vjp = jax.vjp(lambda *a: self.kernel(*a, sizes=SMALL), *args)
        _, vjp_ref = jax.vjp(fff.conditional, *args)  # the same XLA computation as the kernel's backward
        assert_close(y, reference(*args), jnp.float32)
        for got, want in zip(vjp(cotangent), vjp_ref(cotangent), strict=True):
            assert_close(got, want, jnp.float32)

    def test_empty_and_single_token(self, rng):
        x, w_in, b_in, w_out = operands(rng, 1, 5, 32, 3, jnp.float32)
        assert self.kernel(x[:0], w_in, b_in, w_out).shape == (0, 32)
        one = (x[:1], w_in, b_in, w_out)
        assert_close(self.kernel(*one), reference(*one), jnp.float32)

    def test_nan_token_routes_left_without_touching_others(self, rng):
        x, w_in, b_in, w_out = operands(rng, 1, 5, 32, 20, jnp.float32)
        x = x.at[3, 0].set(jnp.nan)
        got, want = self.kernel(x, w_in, b_in, w_out, sizes=SMALL), reference(x, w_in, b_in, w_out)
        assert np.all(np.isnan(np.asarray(got[3])))
        assert_close(jnp.delete(got, 3, axis=0), jnp.delete(want, 3, axis=0), jnp.float32)

    def test_rejects_bad_operands(self, rng):
        x, w_in, b_in, w_out = operands(rng, 1, 2, 16, 4, jnp.float32)
        with pytest.raises(ValueError, match=r"x must be \[T, H\]"):
            self.kernel(x[None], w_in, b_in, w_out)
        with pytest.raises(ValueError, match="N = 2"):
            self.kernel(x, w_in[:, :6], b_in[:, :6], w_out[:, :6])
        with pytest.raises(ValueError, match="block_tokens=24"):
            fff_pallas.BlockSizes(block_tokens=24)

    def test_auto_picks_the_kernel_on_gpu(self):
        if self.INTERPRET:
            pytest.skip("'auto' dispatches to the kernel on GPU only")
        assert fff.resolve_impl("pallas") is fff_pallas.fff_pallas
        jaxpr = jax.make_jaxpr(lambda *a: fff.apply(*a, impl="auto"))(
            jnp.ones((4, 16)), jnp.ones((1, 7, 16)), jnp.ones((1, 7)), jnp.ones((1, 7, 16))
        )
        assert "pallas_call" in str(jaxpr)


class TestFffPallasInterpret(TestFffPallasGpu):
    INTERPRET = True


@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param(fff_pallas.BlockSizes(), id="default"),
        pytest.param(
            fff_pallas.BlockSizes(dense_levels=7, sort_levels=7, sort_min_tokens=0),
            id="dense-sorted",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_lowers_for_an_h200_on_any_host(sizes):
    """The Triton lowering (not its compilation) of 1x11 at H=768, checked without a GPU via jax.export."""
    device = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=None, platform="cuda")
    mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
    nodes, hidden = 4095, 768
    shapes = [
        jax.ShapeDtypeStruct(shape, dtype)
        for shape, dtype in [
            ((300, hidden), jnp.bfloat16),
            ((1, nodes, hidden), jnp.bfloat16),
            ((1, nodes), jnp.float32),
            ((1, nodes, hidden), jnp.bfloat16),
        ]
    ]
    kernel = jax.jit(lambda *a: fff_pallas.fff_pallas(*a, sizes=sizes, interpret=False))
    triton_call = "__gpu$xla.gpu.triton"  # no stability guarantee across jax versions: fine for a check
    unchecked = [jax.export.DisabledSafetyCheck.custom_call(triton_call)]
    with jax.sharding.use_abstract_mesh(mesh):
        exported = jax.export.export(kernel, platforms=["cuda"], disabled_checks=unchecked)(*shapes)
    assert triton_call in exported.mlir_module()
