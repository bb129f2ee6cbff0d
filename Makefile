# terraseg: the two commands that work on a fresh machine are `make demo` and `make test`.
# Both create .venv when it is missing and install the project into it; a second run reuses it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.terraseg-installed

# No telemetry, no update checks, no downloads: tests, demo and CI run offline.
export NO_ALBUMENTATIONS_UPDATE := 1
export ORT_DISABLE_TELEMETRY := 1
export RERUN_ANALYTICS := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg
export PIP_DISABLE_PIP_VERSION_CHECK := 1

DEMO_OUT ?= demo-output
PYTEST_ARGS ?=

.PHONY: venv demo test bench clean-venv help

help:
	@echo "make demo   - set up .venv if needed and run the main job (demo on generated data)"
	@echo "make test   - set up .venv if needed and run the whole test suite"
	@echo "make bench  - run the speed benchmarks in benchmarks/"

venv: $(STAMP)

# torch and torchvision come from the package registry together (never pin the local CPU wheel:
# the registry's torchvision would then fail to import).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m terraseg.demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	@# bench_domain_gap.py and bench_label_efficient.py train models for half an hour or more:
	@# run them on their own (docs/benchmarks.md)
	@for f in benchmarks/bench_*.py; do case $$f in benchmarks/bench_domain_gap.py|benchmarks/bench_label_efficient.py) continue;; esac; \
		echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean-venv:
	rm -rf $(VENV)
