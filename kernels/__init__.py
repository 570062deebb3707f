"""FFF kernels, installed as ``ufbert_jax.kernels``.

Entry points, each with the signature of its pure-JAX reference in ``ufbert_jax.fff_math``
(x [T, H]; w_in, w_out [K, N, H]; b_in [K, N] -> y [T, H]):
  * ``fff_pallas.fff_pallas`` (GPU inference; reference ``conditional``), with its parts ``fff_pallas_routed``
    and ``pallas_math``;
  * ``fff_pallas.fff_pallas_train`` (GPU training; reference ``masked``, whose gradients
    ``path_vjp`` gives), with its backward kernels in ``fff_pallas_backward``;
  * ``fff_cpu.fff_cpu`` (CPU inference, an XLA custom call; reference ``conditional``).
``ufbert_jax.fff`` is the only place that chooses between implementations and makes the forwards
differentiable.
"""
