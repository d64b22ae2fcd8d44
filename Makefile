# attnserve: `make serve` serves the committed model; `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
CORPUS ?= https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
BUNDLE ?= bundles/attnserve-shakespeare/1
RUN ?= runs/default

.PHONY: serve install test lint model int8 bench screenshots lock clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# The serving install, from the lock file (exact versions, every file's hash): onnxruntime, FastAPI
# and friends; no torch. The project itself goes in last, without dependencies of its own.
$(VENV)/.serve: pyproject.toml requirements/serve.txt | $(PY)
	$(PIP) install --require-hashes --no-deps -r requirements/serve.txt
	$(PIP) install --no-deps -e .
	touch $@

# Training, export and test tools, from their lock. torch is pinned and installed first, on its own
# (any other torch request would pull several GB of CUDA packages), so the lock leaves it out.
$(VENV)/.dev: pyproject.toml requirements/dev.txt $(VENV)/.serve
	$(PIP) install torch==2.13.0
	$(PIP) install --require-hashes --no-deps -r requirements/dev.txt
	$(PIP) install --no-deps -e .
	touch $@

# Rewrite the lock files from pyproject.toml (needs the package index): make lock, then commit them.
UV_COMPILE = $(VENV)/bin/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --no-header -q
lock: | $(PY)
	$(PIP) install uv
	$(UV_COMPILE) -o requirements/serve.txt
	$(UV_COMPILE) --extra train --extra test --extra loadtest --override requirements/no-torch.txt -o requirements/dev.txt
	$(UV_COMPILE) requirements/onnxruntime-cpu.in --override requirements/no-onnxruntime-gpu.txt -o requirements/image-cpu.txt
	$(UV_COMPILE) requirements/onnxruntime-gpu.in -o requirements/image-gpu.txt

install: $(VENV)/.serve

serve: $(VENV)/.serve
	$(VENV)/bin/attnserve serve

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: $(VENV)/.dev lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Train, export and verify the default bundle (make model CORPUS=path/or/url).
model: $(VENV)/.dev
	$(PY) -m model --corpus $(CORPUS) --out $(RUN)
	$(PY) -m export --checkpoint $(RUN)/checkpoint.pt --out $(BUNDLE)
	mkdir -p docs && cp $(RUN)/metrics.json docs/training_metrics.json && cp $(RUN)/loss_curve.png docs/loss_curve.png

# The int8 variant of the default bundle (next-token, score, prefill and decode graphs quantized), as a
# model of the repository beside it: make serve then serves both (POST {"model": "attnserve-shakespeare-int8"}).
int8: $(VENV)/.dev
	$(PY) -m export.quantize --bundle $(BUNDLE) --out bundles/attnserve-shakespeare-int8/1

# Triton for the benchmark's comparison column: PyTriton pins numpy 1.x, so it gets its own venv.
.venv-triton/.ok:
	$(PYTHON) -m venv .venv-triton
	.venv-triton/bin/python -m pip --disable-pip-version-check -q install nvidia-pytriton==0.7.0 onnxruntime tokenizers pydantic
	touch $@

# NVIDIA's aiperf for the generation section, in its own venv too (it brings transformers and its own pins).
.venv-aiperf/.ok:
	$(PYTHON) -m venv .venv-aiperf
	.venv-aiperf/bin/python -m pip --disable-pip-version-check -q install aiperf==0.13.0
	touch $@

# Engine and serving benchmarks: rewrites BENCHMARKS.md and docs/bench/ (needs wrk: apt-get install wrk).
bench: $(VENV)/.dev .venv-triton/.ok .venv-aiperf/.ok
	$(PY) -m benchmarks --corpus $(CORPUS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

# Pictures of the attention explorer for docs/interpretability.md (needs Debian's chromium: apt-get install chromium).
screenshots: $(VENV)/.dev
	$(PY) -m loadtest.explorer --screenshots docs/explorer
