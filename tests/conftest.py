"""Shared fixtures: fresh random generators whose seed is printed, so any failure can be replayed."""

import os

import numpy as np
import pytest


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A generator seeded from OS entropy (or UFBERT_TEST_SEED to replay); the seed shows on failure."""
    seed = int(os.environ.get("UFBERT_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
    print(f"{request.node.nodeid}: UFBERT_TEST_SEED={seed}")
    return np.random.default_rng(seed)
