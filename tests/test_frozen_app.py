"""A desktop app frozen with PyInstaller, as its developers build it: no --hidden-import,
the logging.yaml bundled with --add-data, run from another directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from massugc_logging.collector import Collector
from massugc_logging.contract import validate_event

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_the_example_app_frozen_with_pyinstaller_delivers_its_events(tmp_path: Path,
                                                                     key: str) -> None:
    """pyinstaller --onefile --add-data logging.yaml:. examples/app.py, then the binary:
    both of its events reach the local collector."""
    pytest.importorskip("PyInstaller")
    separator = ";" if os.name == "nt" else ":"
    build = subprocess.run(
        [sys.executable, "-m", "PyInstaller", "--onefile", "--noconfirm", "--log-level", "WARN",
         # The test environment installs the package in editable mode, which PyInstaller's
         # import analysis does not follow; an app built against a wheel needs no --paths.
         "--paths", str(REPO),
         "--add-data", f"{REPO / 'logging.yaml'}{separator}.",
         "--distpath", str(tmp_path / "dist"), "--workpath", str(tmp_path / "build"),
         "--specpath", str(tmp_path), str(REPO / "examples" / "app.py")],
        capture_output=True, text=True, timeout=600, check=False, stdin=subprocess.DEVNULL)
    assert build.returncode == 0, build.stderr[-3000:]
    binary = tmp_path / "dist" / ("app.exe" if os.name == "nt" else "app")
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    with Collector().start() as collector:
        env = {**os.environ, "MASSUGC_API_URL": collector.url, "MASSUGC_API_KEY": key,
               "MASSUGC_SPOOL_PATH": str(tmp_path / "spool.sqlite3"),
               "MASSUGC_ENV": "production", "MASSUGC_LOG_DIR": str(tmp_path / "logs")}
        run = subprocess.run([str(binary)], cwd=elsewhere, env=env, capture_output=True,
                             text=True, timeout=120, check=False, stdin=subprocess.DEVNULL)
        assert run.returncode == 0, run.stderr[-3000:]
        bodies = [e["body"] for e in collector.events()]
    assert len(bodies) == 2
    assert all(validate_event(b) == [] for b in bodies)
