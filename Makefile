# attnserve: `make serve` serves the committed model; `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
CORPUS ?= https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
BUNDLE ?= bundles/default
RUN ?= runs/default

.PHONY: serve install test lint model bench screenshots clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# The serving install: onnxruntime, FastAPI and friends; no torch.
$(VENV)/.serve: pyproject.toml | $(PY)
	$(PIP) install -e .
	touch $@

# Training, export and test tools. torch is pinned and installed first, on its own: any other
# torch request would pull several GB of CUDA packages.
$(VENV)/.dev: pyproject.toml $(VENV)/.serve
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[train,test,loadtest]'
	touch $@

install: $(VENV)/.serve

serve: $(VENV)/.serve
	$(PY) -m service

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

# Triton for the benchmark's comparison column: PyTriton pins numpy 1.x, so it gets its own venv.
.venv-triton/.ok:
	$(PYTHON) -m venv .venv-triton
	.venv-triton/bin/python -m pip --disable-pip-version-check -q install nvidia-pytriton==0.7.0 onnxruntime tokenizers pydantic
	touch $@

# Engine and serving benchmarks: rewrites BENCHMARKS.md and docs/bench/ (needs wrk: apt-get install wrk).
bench: $(VENV)/.dev .venv-triton/.ok
	$(PY) -m loadtest.bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

# Pictures of the attention explorer for the README (needs Debian's chromium: apt-get install chromium).
screenshots: $(VENV)/.dev
	$(PY) -m loadtest.explorer --screenshots docs/explorer
