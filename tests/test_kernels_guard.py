"""PyPI has an unrelated package that is also imported as `kernels`. Where it comes first on the
path, byol refuses it with one clear line instead of failing later in the wrong module."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.fixture
def namesake(tmp_path) -> Path:
    """A folder whose `kernels` package is not this project's, as pip would install it."""
    package = tmp_path / "site" / "kernels"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""Another project\'s kernels."""\n\n'
                                         "def get_kernel(repo_id):\n"
                                         "    raise NotImplementedError\n")
    return package.parent


def _run(namesake: Path, *args: str) -> subprocess.CompletedProcess:
    """Python with the namesake first on the path, then this checkout."""
    path = os.pathsep.join([str(namesake), str(REPO), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": path}, check=False)


def test_importing_byol_with_another_kernels_package_first_names_that_package(namesake):
    done = _run(namesake, "-c", "import byol.ops")
    assert done.returncode != 0
    found = namesake / "kernels" / "__init__.py"
    assert f"WrongModuleError: The module 'kernels' found at {found} is not byolctl's" in (
        done.stderr)


def test_a_command_with_another_kernels_package_first_ends_with_one_line(namesake):
    # A tiny run, in case the guard lets the command through.
    done = _run(namesake, "-m", "byolctl", "pretrain", "--data", "random", "--arch", "resnet18",
                "--image-size", "16", "--batch-size", "8", "--steps", "1", "--workers", "0",
                "--device", "cpu", "--out", "run")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: The module 'kernels' found at "
                               f"{namesake / 'kernels' / '__init__.py'} is not byolctl's")
    assert "uninstall it or reinstall byolctl" in lines[0]
