"""The reference configuration ships in the package: init writes it, demo uses it, and a
frozen app finds the logging.yaml bundled beside it."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from test_cli import cli, env  # noqa: F401 - the CLI runner and its environment fixture

from massugc_logging import configure
from massugc_logging.config import packaged_config_path
from massugc_logging.testing import CaptureHandler

REPO = Path(__file__).resolve().parent.parent


def test_the_packaged_configuration_is_the_repositorys_logging_yaml() -> None:
    """One source: the copy in the package is byte for byte the repository's."""
    assert packaged_config_path().read_bytes() == (REPO / "logging.yaml").read_bytes()


def test_init_writes_a_starter_logging_yaml_and_keeps_an_existing_one(
        env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    """init writes the reference file; a second init refuses; --force replaces."""
    work = tmp_path / "app"
    work.mkdir()
    first = cli("init", env=env, cwd=work)
    assert first.returncode == 0, first.stderr
    written = work / "logging.yaml"
    assert written.read_bytes() == packaged_config_path().read_bytes()
    written.write_text("# mine\n", encoding="utf-8")
    again = cli("init", env=env, cwd=work)
    assert again.returncode == 1 and "--force" in again.stderr
    assert written.read_text(encoding="utf-8") == "# mine\n"
    forced = cli("init", str(work), "--force", env=env, cwd=tmp_path)
    assert forced.returncode == 0
    assert written.read_bytes() == packaged_config_path().read_bytes()


def test_demo_runs_in_an_empty_directory_with_the_packaged_configuration(
        env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    """No ./logging.yaml: demo uses the one shipped in the package and exits 0."""
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("demo", "--jobs", "12", env=env, cwd=empty)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "exactly once" in result.stdout


def test_a_frozen_app_finds_the_logging_yaml_beside_its_executable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """configure("logging.yaml") in a PyInstaller build run from another directory."""
    app_dir = tmp_path / "dist"
    app_dir.mkdir()
    (app_dir / "logging.yaml").write_bytes(packaged_config_path().read_bytes())
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(app_dir / "app"))
    configure("logging.yaml", env="test")
    handlers = logging.getLogger("massugc.jobs").handlers + logging.getLogger().handlers
    assert any(isinstance(h, CaptureHandler) for h in handlers)
