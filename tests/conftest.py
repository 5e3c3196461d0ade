"""Shared fixtures and hypothesis profiles.

HYPOTHESIS_PROFILE=ci (the default): derandomized, no example database, bounded examples.
HYPOTHESIS_PROFILE=thorough: many more random examples, for a machine with time to spare.
"""

from __future__ import annotations

import os
import tempfile

import pytest
from hypothesis import HealthCheck, settings

if not os.environ.get("XDG_RUNTIME_DIR"):
    _xdg = tempfile.mkdtemp(prefix="fusebench-xdg-")
    os.chmod(_xdg, 0o700)
    os.environ["XDG_RUNTIME_DIR"] = _xdg

settings.register_profile("ci", deadline=None, derandomize=True, database=None, max_examples=12,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("thorough", deadline=None, max_examples=300,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def registry():
    from harness.registry import discover

    return discover()
