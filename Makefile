# Two commands do everything on a fresh machine: `make bench` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# This machine serves these from local disk; on a GPU box set TORCH_SPEC to the build you want.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
export MEDZOO_DATA ?= $(abspath ../shared/data)
CONFIG ?= benchmarks/pneumoniamnist.toml

.PHONY: setup test bench clean

$(BIN)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[test,explain,tensorboard]'
	touch $@

setup: $(BIN)/.installed

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/medzoo bench $(CONFIG)

clean:
	rm -rf $(VENV) *.egg-info
