# Two entry points do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit integration camvid clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CUDA build runs on the CPU and matches torchvision 0.29.1.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[train,onnx,openvino,nncf,coreml,dev]"
	touch $(STAMP)

## demo: the whole flow on the built-in synthetic recipe (train FP32 + QAT, export, bench, report)
demo: $(STAMP)
	$(BIN)/edgeseg pipeline recipes/smoke.yaml --out runs/demo

## test: lint, format check, type check, then the whole test suite
test: $(STAMP) lint
	$(BIN)/pytest -q -n 2 --dist loadfile tests

lint: $(STAMP)
	$(BIN)/ruff check edgeseg tests benchmarks cli.py
	$(BIN)/ruff format --check edgeseg tests benchmarks cli.py
	$(BIN)/mypy edgeseg

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/pytest -q -m integration tests/integration

## camvid: the real run (about 2 hours on 2 CPU cores: 106 minutes of training, then exports, benches, report)
camvid: $(STAMP)
	$(BIN)/edgeseg pipeline recipes/camvid_mnv2_os16.yaml --out runs/camvid

clean:
	rm -rf runs/demo
