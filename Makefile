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
# The product finds MNIST through --data-dir, $$PIPELINE_DATA_DIR, ./data, the system's data folders
# or Keras' cache (pipeline/data.py). In this repository's own workplace the data sets lie beside the
# clone, in ../shared/datasets: point the product there when nothing else was set.
ifeq ($(origin PIPELINE_DATA_DIR),undefined)
ifneq ($(wildcard ../shared/datasets/mnist),)
export PIPELINE_DATA_DIR := $(abspath ../shared/datasets)
endif
endif

.PHONY: setup test test-fast lint demo train evaluate export verify classify bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py pipeline/preprocess/_loops.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[train,export,dev,micro]'
	@# Ray is optional (classify --engine ray); its tests are skipped, with the reason, if it cannot install.
	$(BIN)/pip install --quiet -e '.[ray]' || echo "warning: Ray could not be installed; --engine ray tests will be skipped"
	@# An editable install leaves the package's own modules uncompiled, where pip compiles a wheel's:
	@# with PYTHONDONTWRITEBYTECODE set (CI, this workplace) every run compiled them again.
	$(BIN)/python -m compileall -q pipeline
	touch $(STAMP)

# Every test (CI's command); test-fast leaves out the `slow` ones (training, conversion, full test
# set, Ray), for a check in about two minutes.
test: setup
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check pipeline tests scripts
	$(BIN)/ruff format --check pipeline tests scripts
	$(BIN)/mypy pipeline
	$(BIN)/lint-imports

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
	$(PIPELINE) classify demo/scans --out demo/results.csv --model demo/exported/conv2d.int8.onnx \
		--review-queue demo/review
	@echo "demo outputs are in ./demo (run, exported, scans, results.csv, review/review.html)"

train: setup
	$(PIPELINE) train --model $(MODEL) --epochs $(EPOCHS) --out $(RUN)

evaluate: setup
	$(PIPELINE) evaluate $(RUN)/model.keras

export: setup
	$(PIPELINE) export --model $(RUN)/model.keras --format $(FORMAT) --quantize $(QUANTIZE) --out exports

# Verifies ./exports if you exported, else the shipped release (reports in ./release-reports).
verify: setup
	$(PIPELINE) verify

classify: setup
	$(PIPELINE) classify $(SCANS) --out $(OUT)

# The classify benchmarks run the default model and the light conv2d int8 on the same files.
BENCH_MODELS = --model exported/bncnn-x4.int8.onnx --model exported/conv2d.int8.onnx

# Sources edited since setup are compiled first: with PYTHONDONTWRITEBYTECODE set, every process
# the benchmarks start would compile them again (tens of milliseconds a start, timed as classify's).
bench: setup
	$(BIN)/python -m compileall -q pipeline
	$(PIPELINE) bench artifacts
	$(PIPELINE) bench classify --count 20000 $(BENCH_MODELS)
	$(PIPELINE) bench scans --count 10000 $(BENCH_MODELS)
	$(PIPELINE) bench scans --style form --count 3000 --start 7000 $(BENCH_MODELS)
	$(PIPELINE) bench photo
	$(PIPELINE) bench review --count 2000
	$(PIPELINE) bench engines
	$(PIPELINE) bench augment

clean:
	rm -rf demo release-reports .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
