"""Inference kernels for the FFF layer, installed as ``ufbert_jax.kernels``.

The entry points ``fff_pallas.fff_pallas`` (GPU) and ``fff_cpu.fff_cpu`` (CPU) have the signature of
``ufbert_jax.fff.conditional`` (their pure-JAX reference): x [T, H]; w_in, w_out [K, N, H]; b_in [K, N] ->
y [T, H]. ``fff_pallas_routed`` and ``pallas_math`` are parts of the GPU one. ``ufbert_jax.fff.resolve_impl``
is the only place that chooses between implementations.
"""
