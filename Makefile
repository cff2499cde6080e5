# Every target that needs Python creates .venv and installs the project first (`setup`), so a
# fresh clone needs no manual step. Targets call the `pipeline` CLI; options go in variables:
#   make train MODEL=flat EPOCHS=20     make classify SCANS=./scans OUT=results.csv

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIPELINE := $(BIN)/pipeline
STAMP := $(VENV)/.installed-stamp

MODEL ?= conv2d
EPOCHS ?= 100
RUN ?= runs/$(MODEL)
FORMAT ?= all
QUANTIZE ?= all
SCANS ?= demo/scans
OUT ?= results.csv
DEMO_EPOCHS ?= 2

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup test lint demo train evaluate export verify classify bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[train,export,dev]'
	@# Ray is optional (classify --engine ray); its tests are skipped, with the reason, if it cannot install.
	$(BIN)/pip install --quiet -e '.[ray]' || echo "warning: Ray could not be installed; --engine ray tests will be skipped"
	touch $(STAMP)

test: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check pipeline tests scripts
	$(BIN)/ruff format --check pipeline tests scripts
	$(BIN)/mypy pipeline

# The main job end to end on the default data (MNIST): data check, a short training run,
# evaluation figures, export to every format and quantization, parity verification, then
# bulk classification of generated scans.
demo: setup
	$(PIPELINE) data
	rm -rf demo
	$(PIPELINE) train --model conv2d --epochs $(DEMO_EPOCHS) --out demo/run
	$(PIPELINE) evaluate demo/run/model.keras
	$(PIPELINE) export --model demo/run/model.keras --format all --quantize all --out demo/exported
	$(PIPELINE) verify --manifest demo/exported/manifest.json
	$(PIPELINE) data samples demo/scans --count 2000 --style scan
	$(PIPELINE) classify demo/scans --out demo/results.csv --model demo/exported/conv2d.int8.onnx
	@echo "demo outputs are in ./demo (run, exported, scans, results.csv)"

train: setup
	$(PIPELINE) train --model $(MODEL) --epochs $(EPOCHS) --out $(RUN)

evaluate: setup
	$(PIPELINE) evaluate $(RUN)/model.keras

export: setup
	$(PIPELINE) export --model $(RUN)/model.keras --format $(FORMAT) --quantize $(QUANTIZE)

verify: setup
	$(PIPELINE) verify

classify: setup
	$(PIPELINE) classify $(SCANS) --out $(OUT)

bench: setup
	$(PIPELINE) bench artifacts
	$(PIPELINE) bench classify
	$(PIPELINE) bench scans
	$(PIPELINE) bench scans --style form
	$(PIPELINE) bench engines
	$(PIPELINE) bench augment

clean:
	rm -rf demo .pytest_cache .mypy_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
