# cifar-bench: `make bench-cpu` runs the main job, `make test` the tests. Both set up
# the environment (.venv, from pyproject.toml) on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STAMP_TIME = $(shell date +%Y%m%d-%H%M%S)
HOST = $(shell hostname)
RUNS ?= runs

.PHONY: venv test test-compat lint bench-cpu bench-gpu bench-quick bench-scaling bench-baseline bench-compare perf gpu-check \
	gpu-check-dry-run clean

# Re-created only when pyproject.toml changes; the stamp is written last, so an
# interrupted install is retried rather than taken for done.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,notebook]'
	touch $@

.venv venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The torch-facing tests against the GPU machine's torch and torchvision, in their own
# environment (.venv-compat; Python 3.12 as there when python3.12 runs, else $(PYTHON)). torch
# comes from PyPI with its CUDA libraries (5.1 GB installed; about 3 minutes to build on the
# 2-core VM); CUDA tests skip without a GPU. Only torch differs between the two environments,
# so the tests run here are those that call torch: models, training, timing, data, the
# protocol, the runner and sweep, the bound's profiler, energy, perf, DDP, equivalence, user
# models and the benchmarks (about 6 minutes on the 2-core VM; reports, docs and the command
# line's parsing run under `make test`). The slow tests (end-to-end runs, the 2-epoch
# accuracy check) are left to `make test` too, which keeps CI well under 30 minutes.
# Everything: make test-compat COMPAT_TESTS=tests COMPAT_MARKS=
# Other versions: make test-compat COMPAT_TORCH=2.4.1 COMPAT_VISION=0.19.1 COMPAT_VENV=.venv-compat-2.4
COMPAT_TORCH ?= 2.11.*
COMPAT_VISION ?= 0.26.*
COMPAT_VENV ?= .venv-compat
COMPAT_MARKS ?= not slow
COMPAT_TESTS ?= tests/benchmarks $(addprefix tests/test_,$(addsuffix .py,models train timing data protocol passes \
	runner sweep bound energy system perf distributed equivalence user_models))
COMPAT_PYTHON ?= $(shell python3.12 -c '' >/dev/null 2>&1 && echo python3.12 || echo $(PYTHON))
COMPAT_STAMP := $(COMPAT_VENV)/.installed-torch-$(subst *,x,$(COMPAT_TORCH))

$(COMPAT_STAMP): pyproject.toml
	test -x $(COMPAT_VENV)/bin/python || $(COMPAT_PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		'torch==$(COMPAT_TORCH)' 'torchvision==$(COMPAT_VISION)' -e '.[dev]'
	$(COMPAT_VENV)/bin/python -c 'import torch, torchvision; print("compat: torch", torch.__version__, "torchvision", torchvision.__version__)'
	touch $@

test-compat: $(COMPAT_STAMP)
	$(COMPAT_VENV)/bin/python -m pytest -q -p no:cacheprovider -m '$(COMPAT_MARKS)' $(COMPAT_TESTS) $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check cnn bench tests scripts

# The standard sweep, its report and its accuracy verdicts (CPU: under 10 minutes on a
# 2-core laptop; CUDA: the GPU sweep in both layouts, plus the CPU reference runs the
# accuracy check needs and the CPU grid its GPU/CPU speedups compare with).
# The report is written whenever the sweep saved results. An accuracy verdict is a finding,
# not a failure of the job: it leads the report's summary and is printed last, and the
# command exits 0 when the sweep and report finished. GATE=1 makes a pair that is not
# equivalent fail the command (exit 3, as `cifar-bench equivalence` does). A configuration
# that failed (a harness or machine error, not a result) exits 1 after the report is written.
GATE ?=
define BENCH_STANDARD
	@run=$(RUNS)/$(HOST)-$(1)-$(STAMP_TIME); \
	$(BIN)/cifar-bench run --preset standard --devices $(1) --out $$run $(ARGS); rc=$$?; \
	[ $$rc -le 1 ] || exit $$rc; \
	$(BIN)/cifar-bench report $$run || exit $$?; \
	echo "report: $$run/report.md"; \
	[ $$rc -eq 0 ] || echo "a configuration failed: see $$run/errors.log; --resume --out $$run runs it again"; \
	$(BIN)/cifar-bench equivalence $$run > $$run/equivalence.txt; eq=$$?; \
	grep -E '^(- |equivalence: )' $$run/equivalence.txt | grep -v '^  '; \
	case $$eq in 0|3) ;; *) echo "equivalence: error (exit $$eq; see $$run/equivalence.txt)"; exit $$eq;; esac; \
	[ -z "$(GATE)" ] || [ $$eq -eq 0 ] || { echo "GATE=1: a pair is not equivalent (exit 3)"; exit 3; }; \
	exit $$rc
endef

bench-cpu: $(STAMP)
	$(call BENCH_STANDARD,cpu)

bench-gpu: $(STAMP)
	$(call BENCH_STANDARD,cuda)

bench-quick: $(STAMP)
	@run=$(RUNS)/$(HOST)-quick-$(STAMP_TIME); \
	$(BIN)/cifar-bench run --preset quick --devices cpu --out $$run $(ARGS) && \
	$(BIN)/cifar-bench report $$run

# pytest-benchmark suite (tests/benchmarks): training step and evaluation batch per device,
# model, batch size and precision, about 1-2 minutes on a 2-core CPU. Runs are stored per
# machine under $(BENCH_STORAGE)/<cpu>__<gpu or cpu-only>/ (tests/benchconfig.py).
# bench-baseline saves a run; bench-compare measures again and fails (exit 1) when a median
# step time is more than BENCH_FAIL slower than the newest saved run. bench-compare saves
# nothing, and without a saved run it stops at once (exit 4) and says how to save one.
BENCH_STORAGE ?= .benchmarks
BENCH_FAIL ?= median:15%
BENCH_PYTEST = $(BIN)/python -m pytest tests/benchmarks --benchmark-storage=$(BENCH_STORAGE)

bench-baseline: $(STAMP)
	$(BENCH_PYTEST) --benchmark-autosave $(ARGS)

bench-compare: $(STAMP)
	$(BENCH_PYTEST) --benchmark-compare --benchmark-compare-fail=$(BENCH_FAIL) $(ARGS)

# Data-parallel scaling on this machine (CPU; add ARGS="--devices cuda" on a GPU server):
# one process with 1 thread and with torch's default threads, then NPROC processes through
# torchrun, and one report with the scaling figure and table.
NPROC ?= 2
SCALING_ARGS = --preset standard --models tutorial,tutorial-wide --batch-sizes 32,128,512 --precisions fp32 \
	--seed 0 --epochs 0
bench-scaling: $(STAMP)
	@run=$(RUNS)/$(HOST)-scaling-$(STAMP_TIME); \
	$(BIN)/cifar-bench run $(SCALING_ARGS) --threads 1 --out $$run/p1-t1 $(ARGS) && \
	$(BIN)/cifar-bench run $(SCALING_ARGS) --out $$run/p1 $(ARGS) && \
	$(BIN)/cifar-bench run $(SCALING_ARGS) --nproc $(NPROC) --out $$run/p$(NPROC) $(ARGS) && \
	$(BIN)/cifar-bench report $$run/p1-t1 $$run/p1 $$run/p$(NPROC) --out $$run

clean:
	rm -rf $(VENV) .venv-compat* .pytest_cache .ruff_cache

# One prepared run for a GPU machine (no install; outputs under $OUT when set; the time bound
# is printed first, `scripts/gpu-check.sh --print-bound` shows the stage table). The dry run
# does the same stages on the CPU with only the GPU machine's packages importable
# (scripts/gpu_env).
gpu-check:
	scripts/gpu-check.sh

gpu-check-dry-run: $(STAMP)
	PYTHON=$(BIN)/python scripts/gpu-check.sh --dry-run
