# The two commands of the README. Each creates .venv and installs what it needs on a fresh machine.
#   make demo  - runtime dependencies only (no torch): lint the bundled YOLO-style example, verify it under FP16
#                emulation, then fix it and convert it to FP16 (verified before it is written)
#   make test  - test and fixture dependencies (torch from this machine's disk), ruff, the fixtures, pytest
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: demo test fixtures chromium fuzz bench-lint bench-verify bench-fix bench-fp16 gpu-check gpu-fallback-venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: setup.cfg pyproject.toml | $(BIN)/python
	$(PIP) -e '.[cpu]'
	touch $@

$(VENV)/.test: setup.cfg pyproject.toml | $(BIN)/python
	$(PIP) -e '.[cpu,test,fixtures]'
	touch $(VENV)/.runtime $@

demo: $(VENV)/.runtime
	$(BIN)/graphdoctor lint examples/yolo_demo.onnx --exit-zero
	@echo
	@echo "As a deployment gate (exit 1 on warnings or errors):"
	@$(BIN)/graphdoctor lint examples/yolo_demo.onnx --format json > /dev/null \
		&& echo "  graphdoctor lint: exit 0, safe to run trtexec" \
		|| echo "  graphdoctor lint: exit $$?, trtexec would not run"
	@echo
	@echo "Would it survive FP16? ONNX Runtime CPU cannot tell; FP16 emulation rounds every tensor through FP16:"
	$(BIN)/graphdoctor verify examples/yolo_demo.onnx --backend onnxruntime-cpu --backend fp16-emulation \
		--shape images:1x3x320x320
	@echo
	@echo "Fix it and convert it to FP16, verified before it is written (into .cache/demo/, the example stays as it is):"
	@mkdir -p .cache/demo
	$(BIN)/graphdoctor fix examples/yolo_demo.onnx --fp16 -o .cache/demo/yolo_demo.fp16.onnx --shape images:1x3x320x320

fixtures: $(VENV)/.test
	$(BIN)/python -m fixtures build

# the HTML report's tests open it in a real headless browser: Debian's chromium
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

test: fixtures chromium
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

# make fuzz [FUZZ_CASES=5000] [FUZZ_SEED=0]: mutated models and hostile CLI cases, a table of the promises
# broken (tests/fuzz/); failing cases in .cache/fuzz/failures-SEED.json, replay with python -m tests.fuzz replay ID
FUZZ_CASES ?= 5000
FUZZ_SEED ?= 0
fuzz: $(VENV)/.test
	$(BIN)/python -m tests.fuzz run --cases $(FUZZ_CASES) --seed $(FUZZ_SEED)

# make gpu-check [WHEELS=folder]: on a machine with an NVIDIA GPU, the GPU tests and a table of verdicts,
# placements and precisions (bench/gpu_check.py), in a venv of its own that sees the machine's torch (it builds
# resnet50) but installs onnxruntime-gpu and TensorRT 10 over any CPU wheel; WHEELS installs them offline
GPU_VENV := .cache/gpu-check-venv
gpu-check:
	$(PYTHON) -m venv --system-site-packages $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		$(if $(WHEELS),--no-index --find-links $(WHEELS)) -e '.[gpu,tensorrt]' pytest
	$(GPU_VENV)/bin/python bench/gpu_check.py

# the real onnxruntime-gpu wheel (255 MB) in a venv of its own, for tests/verify/test_gpu_honesty.py's opt-in
# tests: on a machine without a GPU, no GPU backend may be reported as having run
gpu-fallback-venv:
	$(PYTHON) -m venv .cache/ort-gpu-venv
	.cache/ort-gpu-venv/bin/python -m pip install --quiet --disable-pip-version-check \
		onnxruntime-gpu onnx onnx-ir numpy click rich 'ml_dtypes<0.7' pytest pyyaml
	.cache/ort-gpu-venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .

bench-lint: $(VENV)/.test
	$(PIP) -e '.[bench]'
	$(BIN)/python bench/lint.py

bench-verify: $(VENV)/.test
	$(PIP) -e '.[bench]'
	$(BIN)/python bench/verify.py

bench-fix: $(VENV)/.test
	$(PIP) -e '.[bench]'
	$(BIN)/python bench/fix.py

bench-fp16: $(VENV)/.test
	$(PIP) -e '.[bench]'
	$(BIN)/python bench/fp16.py --install-peers
	$(BIN)/python bench/fp16.py

clean:
	rm -rf $(VENV) .cache
