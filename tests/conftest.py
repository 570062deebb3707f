"""Shared fixtures: random generators with a fixed seed per test, replayable and explorable.

By default the `rng` fixture of a test is seeded from the test's node id (CRC-32), so a CI run is
reproducible as it is. `UFBERT_TEST_SEED=N` seeds every test's generator (and Hypothesis) with N instead:
`make test-seeds` runs the random tests under many N, and a failure's printed N replays it.
"""

import os
import zlib

import numpy as np
import pytest
from hypothesis import settings

SEED_VARIABLE = "UFBERT_TEST_SEED"


def explored_seed() -> int | None:
    """The seed UFBERT_TEST_SEED asks for, or None (per-test default seeds)."""
    value = os.environ.get(SEED_VARIABLE)
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise pytest.UsageError(f"{SEED_VARIABLE}={value!r} must be a non-negative integer")
    return int(value)


def pytest_configure(config: pytest.Config) -> None:
    """Hypothesis follows UFBERT_TEST_SEED (as --hypothesis-seed); without it, the same examples each run."""
    config.addinivalue_line("markers", "random: draws from the rng fixture or Hypothesis (added by conftest)")
    seed = explored_seed()
    settings.register_profile("ufbert", derandomize=seed is None)
    settings.load_profile("ufbert")
    if seed is not None and config.getoption("hypothesis_seed", None) is None:
        config.option.hypothesis_seed = seed


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks `random` the tests that draw from `rng` or Hypothesis: the ones `make test-seeds` explores."""
    for item in items:
        obj = getattr(item, "obj", None)
        if "rng" in getattr(item, "fixturenames", ()) or getattr(obj, "is_hypothesis_test", False):
            item.add_marker(pytest.mark.random)


def pytest_report_header(config: pytest.Config) -> str:
    seed = explored_seed()
    if seed is None:
        return f"rng: a fixed seed per test (from its node id); {SEED_VARIABLE}=N seeds every test with N"
    return f"rng: {SEED_VARIABLE}={seed} for every test"


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A NumPy generator: UFBERT_TEST_SEED if set, else a seed fixed by the test's node id; printed."""
    seed = explored_seed()
    if seed is None:
        seed = zlib.crc32(request.node.nodeid.encode())
    print(f"{request.node.nodeid}: {SEED_VARIABLE}={seed}")
    return np.random.default_rng(seed)
