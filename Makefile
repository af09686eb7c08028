# Two entry points for a fresh machine (see README):
#   make lab    set up, then build the optimizer lab report on built-in data (lab_report/index.html)
#   make test   set up, then run the whole test suite
# torch is pinned to the CPU build 2.13.0 here (the tests' oracle); users of the package
# only need torch>=2.4. An unpinned torch would pull a multi-GB CUDA build.

VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: setup lab test browser

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# The constraint keeps every extra package (the oracles' packages too) on this torch.
	echo "$(TORCH)" > $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt "$(TORCH)" -e ".[test,lab]"
	# timm: tests/test_cautious.py's oracle, loaded by file (its package imports torchvision): no deps.
	$(PY) -m pip install -q --no-deps timm==1.0.31
	touch $@

setup: $(VENV)/.installed

lab: setup
	$(VENV)/bin/optimkit lab --out lab_report
	@echo "report: $(CURDIR)/lab_report/index.html"

# The lab's browser test needs Debian's chromium; install it where we can (root + apt).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium not installed: the browser test will be skipped (it fails under CI=true)"

test: setup browser
	$(VENV)/bin/ruff check .
	$(PY) -m pytest
