"""#23 "Also": under CI=true a skipped test fails the run, from the one hook in tests/conftest.py.

A small suite (a skip in the test, in a fixture, from a marker, and a module skipped whole) is run by
pytest with tests/conftest.py loaded as a plugin, once with CI=true and once without.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

SUITE = """
import pytest

@pytest.fixture
def engine():
    pytest.skip("no Docker engine")

def test_skips_itself():
    pytest.skip("nginx not installed")

def test_needs_engine(engine):
    pass

@pytest.mark.skipif(True, reason="no Java runtime")
def test_marked():
    pass

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_expected_failure():
    assert False

def test_passes():
    pass
"""


def run_suite(folder: Path, ci: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q", "-rA", str(folder)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    (tmp_path / "test_suite.py").write_text(SUITE)
    (tmp_path / "test_whole_module.py").write_text(
        'import pytest\npytest.skip("mosquitto is not installed", allow_module_level=True)\n'
    )
    return tmp_path


def test_every_skip_fails_under_ci(suite: Path):
    result = run_suite(suite / "test_suite.py", "true")
    assert result.returncode == 1, result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(r"1 failed, 1 passed, 1 xfailed, 2 errors", summary), summary  # setup-time skips: errors
    for reason in ("nginx not installed", "no Docker engine", "no Java runtime"):
        assert re.search(rf"skipped under CI=true, where nothing may be skipped: .*{reason}", result.stdout), reason
    module = run_suite(suite / "test_whole_module.py", "true")  # a collection error: pytest stops the run
    assert module.returncode == 2 and "1 error" in module.stdout.strip().splitlines()[-1], module.stdout
    assert "skipped under CI=true, where nothing may be skipped: Skipped: mosquitto is not installed" in module.stdout


def test_skips_stay_skips_without_ci(suite: Path):
    for ci in ("", "false"):
        result = run_suite(suite, ci)
        assert result.returncode == 0, result.stdout
        summary = result.stdout.strip().splitlines()[-1]
        assert re.search(r"1 passed, 4 skipped, 1 xfailed", summary), summary
