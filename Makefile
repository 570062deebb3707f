# Two commands do all set-up on a fresh machine:
#   make demo   tiny pretraining run on the shipped sample corpus, then GLUE fine-tuning + evaluation
#   make test   the default test suite (slow tests excluded; `make test-slow` runs them)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
GLUE_DIR ?= ../shared/data/glue
GLUE_TASKS ?= rte
WORKDIR ?= runs/demo
# A GLUE directory in the original TSV layout when there is one, else the Hugging Face hub (nyu-mll/glue).
GLUE_SOURCE = $(if $(wildcard $(GLUE_DIR)),--glue_dir $(GLUE_DIR),--hub)

.PHONY: test test-slow lint demo clean

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

demo: $(BIN)/.installed
	$(BIN)/python train.py --config=configs/tiny.py --workdir=$(WORKDIR)
	$(BIN)/python eval_glue.py --workdir=$(WORKDIR) $(GLUE_SOURCE) --config.tasks=$(GLUE_TASKS)

lint: $(BIN)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs
