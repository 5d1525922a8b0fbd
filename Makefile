# The two commands the README shows. Both create .venv if it is missing and install
# what they need: torch first (the CPU build on machines without a GPU), then the package.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
# OpenMP threads that sleep instead of spinning: on a shared machine spinning threads
# slow CPU training several-fold (cifarzoo sets the same default when imported).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: test demo install

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest

demo: install
	$(VENV)/bin/cifarzoo benchmark --preset quick --out study/quick
