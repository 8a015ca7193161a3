# Two commands on a fresh machine:
#   make run   - create .venv, install memkit, run the main job (results under runs/):
#                ER vs fine-tuning on Split-Digits at one 100 KB budget, then a sweep of
#                three learners x two total budgets x two seeds, and its report
#   make test  - create .venv, install memkit[all,dev], lint with ruff, run pytest
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Small models on two shared cores: one torch thread each is fastest here.
THREADS := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

.PHONY: run test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[data]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[all,dev]'
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(THREADS) $(BIN)/memkit run examples/split_digits_er.yaml --quiet
	$(THREADS) $(BIN)/memkit run examples/split_digits_finetune.yaml --quiet
	$(THREADS) $(BIN)/memkit report runs/split_digits_finetune runs/split_digits_er --out runs/report
	$(THREADS) $(BIN)/memkit sweep examples/sweep.yaml --out runs/sweeps/sweep
	$(THREADS) $(BIN)/memkit report runs/sweeps/sweep

test: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(THREADS) $(BIN)/pytest

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs build dist *.egg-info
