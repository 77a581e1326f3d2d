# Two entry points (README): `make run` and `make test`. Everything else is a helper target.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A host whose system Python already has a CUDA build of torch (GPU machines) shares it with the
# venv instead of installing the CPU wheel.
VENV_FLAGS := $(shell $(PYTHON) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null && echo --system-site-packages)

.PHONY: run test install install-dev lint postgres chromium clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first: 2.13.0 is the CPU wheel on this machine's disk (a plain `torch` would pull a CUDA build).
# The sample photos of `childface example-dataset` come with it: scikit-image's astronaut and
# insightface's images (its wheel is used only for its data files, so none of its runtime
# dependencies are installed).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[postgres,examples]'
	$(BIN)/python -m pip install -q --no-deps insightface==2.1
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[dev,postgres,examples]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

postgres:
	@scripts/ensure-postgres.sh

# Debian's Chromium for the browser test (installed when missing and apt-get may run).
chromium:
	@scripts/ensure-chromium.sh

run: install
	$(BIN)/childface migrate
	$(BIN)/childface serve --admin

test: install-dev postgres chromium
	$(BIN)/ruff check backend admin_ui tests
	$(BIN)/pytest

lint: install-dev
	$(BIN)/ruff check backend admin_ui tests migrations

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
