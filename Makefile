# The two commands a newcomer needs:  make demo  /  make test
# Both create the virtualenv at .venv on first use and reuse it afterwards: `make demo` installs
# heapemu's runtime dependencies only; `make test` adds the test tools (pytest, ruff, mypy,
# import-linter, zig, matplotlib for the heap pictures).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.heapemu-runtime
STAMP := $(VENV)/.heapemu-installed
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: demo test lint typecheck unit wine-dlls toolchains bench fuzz clean conformance

$(RUNTIME): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(PIP) -e '.[test]'
	touch $(STAMP)

demo: $(RUNTIME)
	$(BIN)/heapemu demo

test: $(STAMP) lint typecheck wine-dlls toolchains unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports  # the architecture contract (pyproject.toml, docs/architecture.md)

typecheck: $(STAMP)
	$(BIN)/mypy

# Wine 8.0's PE DLLs from Debian's packages, into a per-user cache (never into the repo)
wine-dlls: $(STAMP)
	$(BIN)/python -m loader fetch
	$(BIN)/python -m loader fetch-tests  # Wine's conformance test sources (tests/test_conformance.py)

# Debian's mingw-w64 compilers build the test programs that run through Wine's msvcrt
# (zig's windows-gnu targets link the UCRT instead); installed once, needs root
# gdb drives the GDB remote stub in the tests (heapemu run --gdb)
TOOLS := g++-mingw-w64-x86-64-win32 g++-mingw-w64-i686-win32 gdb
# The CPU's direct calls into Unicorn (emu/cpu/direct.c) are a CPython extension built with the
# running Python's headers: a Debian system Python has them in python3-dev (pyenv's and
# python.org's builds carry their own); without them heapemu calls Unicorn through ctypes
toolchains: $(RUNTIME)
	@command -v x86_64-w64-mingw32-g++ >/dev/null && command -v i686-w64-mingw32-g++ >/dev/null \
	  && command -v gdb >/dev/null \
	  || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(TOOLS); }
	@$(BIN)/python -c "import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
	  || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-dev; }

# Wine 8.0's conformance tests (kernel32 virtual.c/heap.c, ntdll virtual.c) built with mingw-w64
# and run under heapemu exec on x86 and x64 (issue 16); opt-in, not part of `make test`.
# Fetches Wine's test sources from Debian's wine source package into ~/.cache/heapemu.
conformance: $(STAMP) wine-dlls toolchains
	$(BIN)/python -m tests.conformance --functions

unit: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks

# long campaigns: the PE parser, 100,000 random system calls per architecture
# (the second without xdist's workers, -n 0: -s shows its statistics, a worker swallows them)
fuzz: $(STAMP)
	HEAPEMU_FUZZ_CASES=200000 $(BIN)/pytest tests/test_pe_fuzz.py
	HEAPEMU_SYSCALL_FUZZ_CALLS=100000 $(BIN)/pytest -n 0 -s tests/test_syscall_fuzz.py

clean:
	rm -rf $(VENV) .build build dist .pytest_cache .mypy_cache .ruff_cache
