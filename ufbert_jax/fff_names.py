"""The names of the FFF implementations and routings, and the one check of each.

Read by the config (``ModelConfig`` validates ``fff_impl`` and ``fff_routing`` here) and by the code that
dispatches on them (``ufbert_jax.fff`` runs an implementation, ``ufbert_jax.fff_variants`` a routing). This
module imports nothing, so that reading a config loads no kernel: the Pallas kernels and the CPU custom call
load with ``ufbert_jax.fff`` only.
"""

#: FFF implementations; ``ufbert_jax.fff.resolve_impl`` says what each one runs.
IMPLS = ("auto", "masked", "conditional", "sparse", "pallas", "cpu")

#: FFF routings: "hard" is UltraFastBERT's (``ufbert_jax.fff_math``), "soft" the training mixture of the
#: FFF paper (``ufbert_jax.fff_variants``).
ROUTINGS = ("hard", "soft")


def check_impl(impl: str) -> str:
    """Returns `impl` if it names an implementation, else raises ValueError listing the names."""
    if impl not in IMPLS:
        raise ValueError(f"unknown FFF impl {impl!r}; expected one of {IMPLS}")
    return impl


def check_routing(routing: str) -> str:
    """Returns `routing` if it names a routing, else raises ValueError listing the names."""
    if routing not in ROUTINGS:
        raise ValueError(f"unknown FFF routing {routing!r}; expected one of {ROUTINGS}")
    return routing
