"""Helpers shared by the test modules: fixtures' data, runs, subprocess drivers.

Test modules import from here (`from support import tiny_runs`), never from
one another; tests/ is on `sys.path` under pytest (tests/conftest.py's folder).
"""

from pathlib import Path

# The repository's root, whatever the depth of the test module asking.
REPO = Path(__file__).resolve().parents[2]
