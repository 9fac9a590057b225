# Two commands matter: `make demo` (a real LoRA fine-tune on a laptop CPU) and `make test`.
# Both create .venv on first use and install the exact tested environment into it from the lock
# file (requirements/cpu.lock), so an upstream release never changes what they run.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK ?= requirements/cpu.lock
# Where the CPU build of torch comes from: a local wheel folder where the machine has one,
# else PyTorch's CPU index. On a GPU cluster use LOCK=requirements/cuda.lock (torch from PyPI).
TORCH_SRC ?= $(if $(wildcard /opt/wheels/torch-*),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu)
LATEST ?= .venv-latest
# test-latest keeps torch at the locked CPU build by default: PyPI's newest torch for Linux is a
# multi-GB CUDA build. `make test-latest LATEST_TORCH=torch` floats it too.
LATEST_TORCH ?= $(shell grep -E '^torch==' requirements/cpu.lock)
COMPILE = $(PY) -m uv pip compile -q pyproject.toml --extra dev --python-version 3.11 --no-header

.PHONY: setup demo test test-latest test-compat lock lint format clean

setup: $(STAMP)

# --no-deps: the lock is complete (every package, exact versions), so pip resolves nothing. A new
# lock rebuilds the venv from scratch, so nothing outside the lock survives in it.
$(STAMP): $(LOCK) requirements/assets.txt
	rm -rf $(VENV) && python3 -m venv $(VENV)
	$(PY) -m pip install -q --no-deps $(TORCH_SRC) -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check  # the lock is consistent (before the assets, whose declared deps are skipped)
	$(PY) -m pip install -q --no-deps -r requirements/assets.txt
	touch $@

demo: setup
	$(VENV)/bin/lora-repro train experiment=demo

test: setup
	$(VENV)/bin/pytest -q

# The same suite against the newest release of every dependency, in a throw-away venv: an upstream
# break shows the day it ships. Not part of .ci/run, so a new release never blocks landing.
test-latest:
	rm -rf $(LATEST) && python3 -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade $(TORCH_SRC) "$(LATEST_TORCH)" -e ".[dev]"
	$(LATEST)/bin/pip install -q --no-deps -r requirements/assets.txt
	$(LATEST)/bin/python -c "import torch, transformers, peft, datasets; print('latest:', 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'datasets', datasets.__version__)"
	$(LATEST)/bin/pytest -q -p no:cacheprovider
	rm -rf $(LATEST)

# The tests that touch transformers internals (cache objects, generation, prefix hooks, PEFT parity)
# on older transformers releases the project supports, each overlaid on the locked venv.
TRANSFORMERS_COMPAT ?= 5.23.0 5.24.0
COMPAT_TESTS ?= tests/test_prefix.py tests/test_nlg_generate.py tests/test_nlg_e2e.py tests/test_peft_parity.py tests/test_lora.py
test-compat: setup
	set -e; for v in $(TRANSFORMERS_COMPAT); do \
	  d=$$(mktemp -d); $(PY) -m pip install -q --no-deps --target $$d transformers==$$v; \
	  echo "== transformers $$v"; PYTHONPATH=$$d $(VENV)/bin/pytest -q -p no:cacheprovider $(COMPAT_TESTS); \
	  rm -rf $$d; done

# Regenerate the locks from pyproject.toml's ranges (the newest versions that satisfy them).
# Run `make test` after it, and commit the lock with the result.
lock: setup
	$(COMPILE) $(TORCH_SRC) -c requirements/cpu.in -o requirements/cpu.lock
	$(COMPILE) --python-platform x86_64-manylinux_2_28 -c requirements/cuda.in -o requirements/cuda.lock

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) $(LATEST) runs outputs multirun .pytest_cache .ruff_cache
