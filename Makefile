# One entry point for a fresh machine: every target creates .venv with everything if missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.solo-iclmsr-installed
# Threads for CPU runs; tests are sized for 2 cores.
export OMP_NUM_THREADS ?= 2

.PHONY: install demo test test-project test-upstream patch-check bench clean

install: $(STAMP)

# torch/torchvision first, pinned and with pip (it takes them from local disk where they lie);
# then the project; then solo-learn 1.0.2, patched and reinstalled as 1.0.2+iclmsr.
$(STAMP): setup.py constraints.txt patches/solo_patch.py $(wildcard patches/*.patch)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	$(PY) patches/solo_patch.py --install
	$(PIP) check
	touch $(STAMP)

patch-check: install
	$(PY) patches/solo_patch.py --check

demo: install
	$(PY) -m solo_iclmsr.cli demo

test: test-project test-upstream

test-project: install
	$(PY) -m pytest -q tests

# solo-learn's own suites (tests/losses, tests/methods, shipped in its wheel), run from inside
# the venv so that the project's tests/ folder is not on the path.
test-upstream: install
	cd $(VENV) && bin/python -m pytest -q -p no:cacheprovider --rootdir=. --pyargs tests.losses tests.methods

bench: install
	$(PY) benchmarks/meta_step.py
	$(PY) benchmarks/augment.py

clean:
	rm -rf $(VENV) build *.egg-info
