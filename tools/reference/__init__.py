"""Generators of reference values from official implementations (run by hand; tests read their saved output).

MKL's CPU-independent mode is set before torch loads it, as in the tests (tests/conftest.py), so that the saved values
do not depend on the machine that wrote them."""
import os

os.environ.setdefault("MKL_CBWR", "COMPATIBLE")
