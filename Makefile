# Two entry points: `make demo` (the main job on the embedded default, CPU) and `make test` (lint + tests).
# Both set up .venv on first use. With no NVIDIA GPU the CPU build of torch is installed first, so that no
# package pulls a multi-GB CUDA build; set TORCH_SPEC / TORCH_INDEX to choose another build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.radial-installed
PYTEST_ARGS ?= -n 2

.PHONY: setup demo test lint format clean wheelhouse

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "GPU found: installing the default torch build"; $(BIN)/python -m pip install -q "torch>=2.5"; \
	else \
		echo "no GPU: installing CPU torch ($(TORCH_SPEC))"; \
		$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $@

demo: $(STAMP)
	$(BIN)/python train/lora.py output_dir=outputs/demo train.overwrite=true
	$(BIN)/python -m radial.mask --model wan --height 480 --width 832 --frames 321 --out outputs/demo/wan_480p_4x_mask
	$(BIN)/python -m train.generate --tiny wan --transformer outputs/demo/base_transformer --lora outputs/demo/lora \
		--prompt "a red ball" --length 4x --out outputs/demo/generate_4x

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS) tests

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
