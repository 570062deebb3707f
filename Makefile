# Two commands do all set-up on a fresh machine:
#   make demo   tiny pretraining run on the shipped sample corpus, then GLUE fine-tuning + evaluation
#   make test   the default test suite (slow tests excluded; `make test-slow` runs them)
# `make lint` is ruff check + format (CI runs it before the tests); `make test-seeds` explores random draws.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
GLUE_DIR ?= ../shared/data/glue
GLUE_TASKS ?= rte
WORKDIR ?= runs/demo
# A GLUE directory in the original TSV layout when there is one, else the Hugging Face hub (nyu-mll/glue).
GLUE_SOURCE = $(if $(wildcard $(GLUE_DIR)),--glue_dir $(GLUE_DIR),--hub)

# make test-seeds: the fast random tests (marked `random` by tests/conftest.py) under SEEDS fresh seeds, each
# printed; `UFBERT_TEST_SEED=N .venv/bin/python -m pytest -m random FILE` replays a failing one. Compiled
# programs are cached between the seeds (the shapes repeat, only the values change): about 2 minutes of CPU
# time a seed once compiled, so SEEDS=5 for a quick look.
SEEDS ?= 20
SEED_TESTS ?= tests/test_fff.py tests/test_fff_cpu.py tests/test_model.py tests/test_workdir.py tests/test_lookup.py \
	tests/test_original_format.py tests/test_masking.py tests/test_loader.py tests/test_shards.py

.PHONY: test test-slow test-seeds lint demo clean

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 12), f"need Python >= 3.12 (jax 0.11.2); $(PYTHON) is {sys.version.split()[0]}: install 3.12 (pyenv reads .python-version) or pass PYTHON=..."'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

test: $(BIN)/.installed
	$(BIN)/python -m pytest -m "not slow and not gpu" -q

test-slow: $(BIN)/.installed
	$(BIN)/python -m pytest -m "slow and not gpu" -q

test-seeds: $(BIN)/.installed
	@cache=$$(mktemp -d); trap 'rm -rf "$$cache"' EXIT; failed=""; \
	seeds=$$($(BIN)/python -c 'import random; print(*random.sample(range(2**32), $(SEEDS)))'); \
	for seed in $$seeds; do \
		echo "UFBERT_TEST_SEED=$$seed"; \
		JAX_COMPILATION_CACHE_DIR="$$cache" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 UFBERT_TEST_SEED=$$seed \
			$(BIN)/python -m pytest -m "random and not slow and not gpu" -q -p no:cacheprovider $(SEED_TESTS) \
			|| failed="$$failed $$seed"; \
	done; \
	if [ -n "$$failed" ]; then echo "failing seeds:$$failed"; exit 1; fi; echo "all $(SEEDS) seeds passed"

demo: $(BIN)/.installed
	$(BIN)/python train.py --config=configs/tiny.py --workdir=$(WORKDIR)
	$(BIN)/python eval_glue.py --workdir=$(WORKDIR) $(GLUE_SOURCE) --config.tasks=$(GLUE_TASKS)

lint: $(BIN)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs
