"""What ``import handler`` does to the process before the model is loaded."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

CODE = "import os, sys, handler; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_waits_passively_unless_told_otherwise(given, expected):
    """Set before torch is imported, or libgomp never sees it; an explicit value wins."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    result = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True, cwd=REPO, env=env)
    assert result.stdout.split() == [expected, "False"]


LOGGED = (
    "import logging, handler; settings = handler.logged_settings(); "
    "logging.getLogger('medgemma.test').debug('a debug line'); "
    "print(settings.log_level, logging.getLevelName(logging.getLogger().level))"
)


@pytest.mark.parametrize(
    ("given", "expected"), [("debug", "debug DEBUG"), ("WARNING", "warning WARNING"), ("", "info INFO")]
)
def test_log_level_is_read_in_any_case(given, expected):
    """LOG_LEVEL is checked with the other settings, then given to logging in its upper case."""
    env = {**os.environ, "LOG_LEVEL": given}
    result = subprocess.run(
        [sys.executable, "-c", LOGGED], capture_output=True, text=True, check=True, cwd=REPO, env=env
    )
    assert result.stdout.strip() == expected
    assert ("a debug line" in result.stderr) == (expected == "debug DEBUG")
