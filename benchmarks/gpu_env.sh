# Source on the GPU machine (bash benchmarks/gpu_env.sh is wrong: source it) from the repository root.
# The device machine has jax but no install of this repo: put the repo on PYTHONPATH and map the
# top-level kernels/ folder to the package ufbert_jax.kernels (what pyproject's package-dir does), with a
# sitecustomize meta-path finder, so `import ufbert_jax.kernels.fff_pallas` works as it does here.
export UFBERT_REPO="$PWD"
mkdir -p /tmp/ufbert_site
cat > /tmp/ufbert_site/sitecustomize.py <<'PY'
import importlib.abc
import importlib.util
import os


class _KernelsFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "ufbert_jax.kernels":
            return None
        folder = os.path.join(os.environ["UFBERT_REPO"], "kernels")
        return importlib.util.spec_from_file_location(
            name, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
        )


import sys  # noqa: E402

sys.meta_path.insert(0, _KernelsFinder())
PY
export PYTHONPATH="/tmp/ufbert_site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
python3 -c 'import ufbert_jax.kernels.fff_pallas, jax; print("env ok:", jax.__version__, jax.devices())'
