# Two commands a new user needs: `make demo` and `make test`.
# Each creates .venv when missing and (re)installs the project when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-quick install bench bench-cuda clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,hf]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m clipcompare demo

# The whole suite, offline and sealed (tests/conftest.py): what CI runs, and what `make test` means.
test: $(STAMP)
	$(BIN)/python -m pytest -q

# The quick run while developing: the same suite without the tests marked `slow` (full-size
# ResNet-50/RN50/ViT-B-32 builds, SIGKILL and torchrun subprocesses). Run `make test` before committing.
test-quick: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Every benchmark with a goal, each to its end; exits 1 at the end listing the goals missed.
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# The figures still to be measured on a GPU (evaluate with GPU decoding and bf16, decode agreement,
# the trainer's bf16), in one go. Where the machine has torch but no venv of ours:
# `PYTHONPATH=src make bench-cuda GPY=python3`. `-` keeps going past a missed goal, so every figure prints.
GPY ?= $(BIN)/python
WORKERS ?= 15
bench-cuda:
	-$(GPY) benchmarks/evaluate_speed.py --device cuda --workers $(WORKERS) --head-classes 0
	-$(GPY) benchmarks/evaluate_speed.py --device cuda --workers $(WORKERS) --head-classes 0 --decode gpu --precision bf16
	-$(GPY) benchmarks/decode_agreement.py --device cuda
	-$(GPY) benchmarks/train_speed.py --device cuda --precision bf16 --batch-size 128

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
