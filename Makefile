# Two commands do everything on a fresh machine with Python 3.11:
#   make serve   install into .venv, then run broker + workers + gunicorn on 127.0.0.1:8888
#   make test    install into .venv, then run the whole test suite
#   make test-fast   only the in-process tests (tests/unit: no server processes), for the edit-test loop
# Installing twice is a no-op (a stamp file remembers what setup.py asked for).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed-$(shell cat setup.py Makefile | cksum | cut -d' ' -f1)
HOST ?= 127.0.0.1
PORT ?= 8888
PYTEST_ARGS ?=

.PHONY: install serve test test-fast lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.py Makefile | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	# The pinned CPU build first, so nothing pulls a multi-GB CUDA build of torch.
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[demo,test,bench]"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

serve: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/intgrads --cpu -h $(HOST) -p $(PORT)

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests/unit -m "not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check intgrads_zmq frontend tests bench

bench: install
	$(PY) bench/engine_vs_captum.py
	$(PY) bench/broker_overhead.py
	$(PY) bench/end_to_end.py
	$(PY) -m bench.time_trial --examples 2 --vs-captum
	$(PY) bench/reliability.py
	$(PY) bench/accuracy_vs_time.py
	$(PY) bench/abandonment.py
	$(PY) bench/memory_soak.py
	$(PY) bench/explain_targets.py --threads 1

clean:
	rm -rf $(VENV) build *.egg-info
