# Set-up is part of every target: a fresh machine needs only python3 (3.10+).
VENV ?= .venv
PY := $(VENV)/bin/python
# torch pinned to the CPU wheel on this disk (an unpinned torch pulls a multi-GB CUDA build);
# triton pinned to the H100's version so CPU tests and the GPU run one compiler.
TORCH_PIN ?= torch==2.13.0
TRITON_PIN ?= triton==3.6.0

.PHONY: venv browser demo test chaos clean

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q "$(TRITON_PIN)" -e '.[test]'
	touch $@

venv: $(VENV)/.installed browser

# A headless browser for the `kevolve cache report` test (it renders the page and checks the
# screenshot). Debian's chromium, only where it is missing and apt-get exists: ~15-30 s and a 113 MB
# download (414 MB on disk) on a fresh machine, nothing after that. Without it that test skips
# (fails under CI=true, where it must run).
browser:
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  echo "installing Debian chromium for the report test (~15-30 s)"; \
	  ( $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	      --no-install-recommends chromium >/dev/null ) || echo "could not install chromium: the report browser test will not run"; \
	fi

demo: venv
	$(PY) -m torch_kevolve.demo

test: venv
	$(PY) -m pytest -q

# Issue 10's long run: the hostile-input property tests with 20x their `make test` example counts
# (2,000 per family; -s prints the PROPERTY figure lines). See RELIABILITY.md for its time.
chaos: venv
	KEVOLVE_PROPERTY_SCALE=20 $(PY) -m pytest -q -s tests/test_properties.py

clean:
	rm -rf $(VENV) build *.egg-info
