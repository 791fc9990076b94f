# Set-up is part of every target: a fresh machine needs only python3 (3.10+).
VENV ?= .venv
PY := $(VENV)/bin/python
# torch pinned to the CPU wheel on this disk (an unpinned torch pulls a multi-GB CUDA build);
# triton pinned to the H100's version so CPU tests and the GPU run one compiler.
TORCH_PIN ?= torch==2.13.0
TRITON_PIN ?= triton==3.6.0

.PHONY: venv demo test clean

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q "$(TRITON_PIN)" -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m torch_kevolve.demo

test: venv
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
