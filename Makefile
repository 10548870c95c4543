# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned to the CPU build that lies on this machine's disk: a bare `torch` would
# pull a multi-GB CUDA build. On a GPU box set TORCH_SPEC="torch" (or your CUDA wheel).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.stamp-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: venv demo test test-fast lint bench clean browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[test,web,download,spark,icons]'
	touch $(STAMP)

venv: $(STAMP)

# Debian's Chromium for the page tests (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: browser tests will be skipped"; }

demo: venv
	$(BIN)/openalign demo --out demo-out

# The layer contract (pyproject.toml [tool.importlinter]) first: a broken layer fails the run.
lint: venv
	$(BIN)/lint-imports --no-cache

test: venv browser lint
	$(BIN)/python -m pytest -q tests

test-fast: venv lint
	$(BIN)/python -m pytest -q -m "not slow and not browser and not spark" tests

clean:
	rm -rf $(VENV) demo-out runs
