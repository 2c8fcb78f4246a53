# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv if missing and install the package with its dev extras first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO_BASE ?= runs/digits-resnet20
DEMO_OUT  ?= runs/demo-resnet20-tucker

.PHONY: demo test lint bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded default (offline): a digits baseline of ResNet-20 (trained once, then
# reused), compressed with Tucker-2 at half the ranks, fine-tuned 4 epochs, exported and validated.
demo: $(STAMP) $(DEMO_BASE)/model.safetensors
	$(VENV)/bin/tdexport compress-and-export resnet20 --weights $(DEMO_BASE) --data digits \
		--format tucker --rank ratio:0.5 --finetune-epochs 4 --out $(DEMO_OUT) --overwrite

$(DEMO_BASE)/model.safetensors: | $(STAMP)
	rm -rf $(DEMO_BASE)
	$(VENV)/bin/tdexport train resnet20 --data digits --epochs 6 --out $(DEMO_BASE)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) tools/bench_decompose.py
	$(PY) tools/bench_train.py
	$(PY) tools/bench_latency.py
	$(PY) tools/bench_recovery.py

clean:
	rm -rf runs .pytest_cache
