"""PyInstaller support, found through the ``pyinstaller40`` entry point.

A ``logging.yaml`` names classes only as strings (``massugc_logging.CloudHandler``,
``pythonjsonlogger.json.JsonFormatter``, ``massugc_logging.alerts...``), which
PyInstaller's import analysis cannot see. The hook in this directory collects
what such a configuration may name, and the package's own data (the reference
``logging.yaml``), so a frozen app needs no ``--hidden-import``.
"""

from __future__ import annotations

import os


def get_hook_dirs() -> list[str]:
    """The directories holding this package's PyInstaller hooks."""
    return [os.path.dirname(__file__)]
