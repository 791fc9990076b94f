#!/usr/bin/env python
"""Thin wrapper: ``python scripts/prewarm.py [args]`` == ``kevolve prewarm [args]``."""
import sys

from torch_kevolve.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["prewarm", *sys.argv[1:]]))
