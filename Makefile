# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv if missing and install the package with its dev extras first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO_OUT ?= runs/demo-resnet50-tucker

.PHONY: demo test lint bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tdexport compress resnet50 --format tucker --rank vbmf --weights random --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) tools/bench_decompose.py

clean:
	rm -rf runs .pytest_cache
