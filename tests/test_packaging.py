"""The distribution: one import package, allocation_ledger, whatever the folders hold.

The three code folders stay at the top of the repository and install as
`allocation_ledger.domain`, `.projections` and `.adapters` (setuptools
`package-dir`). These tests keep that true while modules move inside the
folders: the package list is whole, a built wheel holds every module under
`allocation_ledger/` and nothing at the top besides, and the installed command
works from a directory that has packages of its own named `domain` or
`adapters`. They name no module but the entry point, `allocation_ledger.adapters.cli`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.process_support import POOL_MCP_FIRST

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "allocation_ledger"
FOLDERS = ("domain", "projections", "adapters")
ENTRY_MODULE = f"{PACKAGE}.adapters.cli"
COMMAND = Path(sys.executable).parent / "allocation-ledger"
SHADOWING = 'raise ImportError("user\'s package")\n'


def setuptools_config() -> dict[str, object]:
    with (REPO / "pyproject.toml").open("rb") as file:
        config: dict[str, object] = tomllib.load(file)["tool"]["setuptools"]
    return config


def source_files(folder: str) -> list[Path]:
    """The Python files under a code folder, relative to the repository."""
    return sorted(
        path.relative_to(REPO)
        for path in (REPO / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    )


def package_name(directory: Path) -> str:
    """`adapters/mcp` -> `allocation_ledger.adapters.mcp`."""
    return ".".join((PACKAGE, *directory.parts))


# -- the package list in pyproject.toml ----------------------------------------


def test_each_folder_is_mapped_into_the_one_package() -> None:
    assert setuptools_config()["package-dir"] == {
        f"{PACKAGE}.{folder}": folder for folder in FOLDERS
    }


def test_the_package_list_names_every_package_in_the_folders() -> None:
    """A subpackage added later cannot be left out of the wheel."""
    found = {
        package_name(path.parent)
        for folder in FOLDERS
        for path in source_files(folder)
        if path.name == "__init__.py"
    }
    listed = setuptools_config()["packages"]
    assert isinstance(listed, list)
    assert len(listed) == len(set(listed)), "a package is listed twice"
    assert set(listed) == found, (
        f"missing from [tool.setuptools] packages: {sorted(found - set(listed))}; "
        f"listed but not a package: {sorted(set(listed) - found)}"
    )


def test_every_folder_that_holds_modules_is_a_package() -> None:
    """A folder of modules without `__init__.py` would be left out of the wheel."""
    folders = {path.parent for folder in FOLDERS for path in source_files(folder)}
    bare = sorted(str(f) for f in folders if not (REPO / f / "__init__.py").exists())
    assert bare == [], f"folders of modules with no __init__.py: {bare}"


# -- a built wheel -------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """A wheel built from a copy of the working tree (so no stale `build/` and
    nothing written into the checkout), offline: no index, no build isolation."""
    with (REPO / "pyproject.toml").open("rb") as file:
        needed = tomllib.load(file)["build-system"]["requires"]
    for requirement in map(Requirement, needed):
        installed = version(requirement.name)
        assert requirement.specifier.contains(installed), (
            f"building needs {requirement}, this environment has {installed}: "
            "the dev extra should install it (pip install -e '.[dev]')"
        )

    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for folder in FOLDERS:
        shutil.copytree(
            REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        check=True,
        timeout=300,
    )
    [built] = out.glob("*.whl")
    with zipfile.ZipFile(built) as opened:
        yield opened


@pytest.mark.slow
def test_the_wheel_installs_only_allocation_ledger(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    top = {name.split("/", 1)[0] for name in names}
    dist_info = {entry for entry in top if entry.endswith(".dist-info")}
    assert len(dist_info) == 1
    assert top - dist_info == {PACKAGE}, f"top-level entries: {sorted(top)}"
    for folder in FOLDERS:
        assert f"{PACKAGE}/{folder}/__init__.py" in names
    [info] = dist_info
    entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    assert f"allocation-ledger = {ENTRY_MODULE}:main" in entry_points


@pytest.mark.slow
def test_the_wheel_holds_every_module_of_the_folders(wheel: zipfile.ZipFile) -> None:
    modules = {name for name in wheel.namelist() if name.endswith(".py")}
    expected = {
        f"{PACKAGE}/{path.as_posix()}"
        for folder in FOLDERS
        for path in source_files(folder)
    }
    assert modules == expected, (
        f"missing from the wheel: {sorted(expected - modules)}; "
        f"not from the folders: {sorted(modules - expected)}"
    )


# -- the installed command beside packages of the user's -----------------------


@pytest.fixture
def users_directory(tmp_path: Path) -> Path:
    """A working directory with packages of its own named like our folders;
    each fails to import, so the command must never pick them up."""
    directory = tmp_path / "work"
    for folder in FOLDERS:
        (directory / folder).mkdir(parents=True)
        (directory / folder / "__init__.py").write_text(SHADOWING)
    return directory


def command_env(database: Path) -> dict[str, str]:
    """As the stdio demo test runs it: a SQLite file, and nothing else inherited."""
    env = {
        "ALLOCATION_LEDGER_STORE": "sqlite",
        "ALLOCATION_LEDGER_DATABASE": str(database),
        "ALLOCATION_LEDGER_LOG_LEVEL": "WARNING",
        "COLUMNS": "200",
    }
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def run(
    command: list[str], cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_users_packages_would_shadow_a_bare_import(
    users_directory: Path, tmp_path: Path
) -> None:
    """The trap is armed: from that directory, `import domain` finds the user's."""
    env = command_env(tmp_path / "ledger.db")
    for folder in FOLDERS:
        imported = run([sys.executable, "-c", f"import {folder}"], users_directory, env)
        assert imported.returncode != 0
        assert "user's package" in imported.stderr


@pytest.mark.slow
def test_the_demo_runs_beside_the_users_own_packages(
    users_directory: Path, tmp_path: Path
) -> None:
    assert COMMAND.exists(), f"{COMMAND} is not installed: pip install -e '.[dev]'"
    database = tmp_path / "ledger.db"
    ports = f"{POOL_MCP_FIRST}-{POOL_MCP_FIRST + 9}"  # this run's, not 9000
    command = [str(COMMAND), "demo", "--mcp-ports", ports]
    completed = run(command, users_directory, command_env(database))
    assert completed.returncode == 0, completed.stderr
    assert "user's package" not in completed.stdout + completed.stderr
    assert "Connected over stdio to allocation-ledger" in completed.stdout
    assert database.exists()


def test_the_entry_module_runs_beside_the_users_own_packages(
    users_directory: Path, tmp_path: Path
) -> None:
    completed = run(
        [sys.executable, "-m", ENTRY_MODULE, "--help"],
        users_directory,
        command_env(tmp_path / "ledger.db"),
    )
    assert completed.returncode == 0, completed.stderr
    assert "allocation-ledger" in completed.stdout
