"""The dependency arrows: byolctl -> byol -> kernels, and inside byol, evaluation and
pretraining share runtime rules and the run folder's layout through modules of their own
(byol.runtime, byol.run_folder), not through each other."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _importing(files: list[Path], prefix: str) -> list[str]:
    return [str(f.relative_to(ROOT)) for f in files
            if any(name == prefix or name.startswith(prefix + ".") for name in _imports(f))]


@pytest.mark.parametrize("package, forbidden", [("kernels", "byol"), ("kernels", "byolctl"),
                                                ("byol", "byolctl"), ("byol", "typer"),
                                                ("byol", "rich")])
def test_imports_point_one_way(package, forbidden):
    assert _importing(_files(package), forbidden) == []


def test_evaluation_and_profiling_do_not_import_pretraining():
    files = [*_files("byol/eval"), *_files("byol/profiling"), *_files("byolctl")]
    # The pretrain command alone starts a pretraining run.
    assert _importing(files, "byol.pretrain") == ["byolctl/cli.py"]


def test_pretraining_does_not_import_evaluation_runs():
    files = [ROOT / "byol" / name for name in ("pretrain.py", "build.py", "trainer.py")]
    assert _importing(files, "byol.eval.run") == []
