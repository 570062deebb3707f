"""Inference kernels for the FFF layer, installed as ``ufbert_jax.kernels``.

Each kernel module has the signature of ``ufbert_jax.fff.conditional`` (its pure-JAX reference):
x [T, H]; w_in, w_out [K, N, H]; b_in [K, N] -> y [T, H]. ``ufbert_jax.fff.resolve_impl`` is the only
place that chooses between them.
"""
