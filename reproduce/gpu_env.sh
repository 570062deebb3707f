# Installs this repository on the GPU machine the ordinary way: the setup that every GPU number of the docs
# (docs/gpu_kernel.md, docs/sparse_training.md, docs/pretraining.md, docs/RESULTS.md) was measured after;
# it reproduces nothing by itself. Source it from the repository root at the start of every GPU command
# (running it with bash sets nothing up):
#
#     source reproduce/gpu_env.sh && python3 benchmarks/fff_layer_gpu.py --out $OUT
#
# Machine-specific, by design: it is written for our GPU machine, which receives a plain copy of the working
# tree, reaches no package registry and returns what the command writes under $OUT. Its python3
# already holds jax 0.11.2, flax, optax, orbax-checkpoint, chex, tokenizers, safetensors, tqdm, matplotlib,
# scipy, scikit-learn, pytest and hypothesis, but not grain, ml_collections or datasets. So:
#   1. the wheels in the git-ignored .whl/ folder (name `.whl` in the run's `carry`) go into /tmp/site, which
#      goes on PYTHONPATH: grain, ml_collections, datasets and those of their needs the machine lacks;
#   2. the repository itself is installed editable, as `make` does here (without its dependencies, which
#      would need the registry, and with the machine's setuptools instead of an isolated build), so
#      `import ufbert_jax` and `import ufbert_jax.kernels` resolve as on a user's machine.
#
# Fill .whl/ once on the development machine, from the repository root (versions as in .venv):
#
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#         --platform manylinux2014_x86_64 -d .whl \
#         grain==0.2.18 array_record==0.8.6 dm-tree==0.1.10 portpicker==1.6.0 importlib_resources==7.1.0 \
#         ml_collections==1.1.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
#
# (5.5 MB; the GPU machine already has the rest of their Requires-Dist: absl-py, etils, cloudpickle,
# protobuf, attrs, wrapt, psutil, pyarrow, pandas, xxhash, fsspec, huggingface-hub, pyyaml.)
if [ -d .whl ] && compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || return 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "reproduce/gpu_env.sh: no .whl/*.whl here (name .whl in carry): grain, ml_collections, datasets are missing" >&2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-build-isolation -e . || return 1
export PYTHONUNBUFFERED=1
(cd /tmp && python3 -c 'import jax, ufbert_jax.kernels.fff_pallas as k; print("env ok:", jax.__version__, jax.devices(), k.__file__)')
