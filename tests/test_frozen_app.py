"""A desktop app frozen with PyInstaller, as its developers build it: no --hidden-import,
the logging.yaml bundled with --add-data, run from another directory."""

from __future__ import annotations

import base64
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
    """pyinstaller --onefile --add-data logging.yaml:. examples/app.py, then the binary,
    started as the desktop shell starts it (no MASSUGC_ENV, no log directory, the key in the
    app's own file, the working directory its install folder): it runs the production
    environment, writes its log file in the user's log directory, and both of its events
    reach the API."""
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
    install_folder = tmp_path / "Program Files" / "MassUGC"
    install_folder.mkdir(parents=True)
    home = tmp_path / "home"
    (home / ".zyra-video-agent").mkdir(parents=True)
    (home / ".zyra-video-agent" / ".massugc_api_key").write_text(
        base64.b64encode(key.encode()).decode())
    with Collector().start() as collector:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MASSUGC_")}
        env.update({"HOME": str(home), "XDG_DATA_HOME": str(home / "data"),
                    "XDG_STATE_HOME": str(home / "state"),
                    "XDG_CONFIG_HOME": str(home / "config"),
                    # The one thing not as shipped: the API is the local collector.
                    "MASSUGC_API_URL": collector.url})
        run = subprocess.run([str(binary)], cwd=install_folder, env=env, capture_output=True,
                             text=True, timeout=120, check=False, stdin=subprocess.DEVNULL)
        assert run.returncode == 0, run.stderr[-3000:]
        bodies = [e["body"] for e in collector.events()]
    assert len(bodies) == 2
    assert all(validate_event(b) == [] for b in bodies)
    log_file = home / "state" / "massugc-logging" / "log" / "massugc.jsonl"
    assert log_file.is_file()  # production's JSON file, in the user's log directory
    assert list(install_folder.iterdir()) == []  # nothing written in the install folder
