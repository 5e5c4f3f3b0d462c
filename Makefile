# Two commands set everything up on a fresh machine: `make demo` and `make test` (both install first, idempotently).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1

.PHONY: install system-deps test demo lint

install: system-deps $(STAMP)

# Fashion-MNIST's IDX files come from Debian (examples/prepare_fashion_mnist.py and its test read them).
system-deps:
	@test -d /usr/share/datasets/fashion-mnist || { \
	  if command -v apt-get >/dev/null; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "Install Debian's dataset-fashion-mnist for the Fashion-MNIST tests"; fi; }

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest tests -q

demo: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/demo.sh

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
