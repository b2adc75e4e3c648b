# Every target does its own set-up: a fresh machine needs only python3 and make.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PARAMS ?= configs/study_quick.yaml

.PHONY: install study test docs bench export clean-nbs check browser

install: $(STAMP)

# Quantus, which tests/test_quantus.py runs against our metrics, is installed with --no-deps: its wheel requires
# opencv-python, a second build of cv2 beside this project's opencv-python-headless (and one that needs libGL, absent
# on headless machines); its other dependencies are ours, plus cachetools (pinned in constraints.txt). So it is not in
# settings.ini, and `pip check` reports exactly this line, which the recipe lets through; any other line fails it.
QUANTUS_NO_CV2 := quantus 0.6.0 requires opencv-python, which is not installed.

# Byte-compiled at install, on purpose: where PYTHONDONTWRITEBYTECODE is set (as on this project's CI machines) Python
# writes no .pyc when it imports, so without it every process would compile torch again. pip compiles on one core
# (~90 s here); compileall on every core instead. Like pip's, it skips the few files written for a newer Python
# (torch's tests), hence `|| true`: what matters is that the modules this project imports are compiled.
SITE = $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
$(STAMP): settings.ini setup.py constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -c constraints.txt -e ".[dev]"
	$(PY) -m pip install -q --no-compile --no-deps -c constraints.txt quantus cachetools
	$(PY) -m compileall -qq -j 0 "$(SITE)" || true
	$(PY) -m pip check > $(VENV)/.pip-check 2>&1; test -s $(VENV)/.pip-check && ! grep -vxF -e '$(QUANTUS_NO_CV2)' -e 'No broken requirements found.' $(VENV)/.pip-check
	touch $(STAMP)

## The study's main job: the whole pipeline on the embedded demo data (mini-forensics).
study: $(STAMP)
	$(BIN)/deepfake-explain-study --params $(PARAMS)

# `make test` installs the environment and the browser at the same time (apt-get waits on the network, pip on the CPU).
MAKEFLAGS += -j2

## The test suite: library/notebook consistency, every notebook (quick defaults, two at a time, one thread each), integration
## tests. pytest runs on two processes, one test file each at a time, the long study runs first (tests/conftest.py orders them).
test: $(STAMP) browser
	$(PY) tools/consistency.py
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --timing
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=20 tests

## Headless Chromium for the tests that open pages as a user would (the explained video playing in its page): installed
## with apt-get where it is missing and this is root on Debian/Ubuntu; elsewhere those checks are skipped and say so.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    (timeout 600 apt-get update -qq && timeout 600 apt-get install -y -qq chromium) >/dev/null 2>&1 && echo "make: installed chromium"; } || \
	  echo "make: headless Chromium is not installed (apt-get install chromium): the browser checks will be skipped"

## Offline docs site in _docs/ (nbdev_docs when Quarto is present).
docs: $(STAMP)
	$(PY) tools/build_docs.py

## Benchmarks: every one on this CPU; DEVICE=cuda (or cpu): the device benchmark (training, inference, explanation,
## MTCNN, loader; targets as PASS/FAIL lines); QUICK=1 makes it small enough for a CPU.
DEVICE ?=
QUICK ?=
bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(if $(DEVICE),--device $(DEVICE)) $(if $(QUICK),--quick)

export: $(STAMP)
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean

check: $(STAMP)
	$(PY) tools/consistency.py
