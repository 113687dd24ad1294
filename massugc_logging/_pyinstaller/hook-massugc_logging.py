"""PyInstaller hook: what a logging.yaml may name by string, and the package data."""

from PyInstaller.utils.hooks import collect_data_files, collect_submodules

hiddenimports = [
    *collect_submodules("massugc_logging", filter=lambda name: "_pyinstaller" not in name),
    *collect_submodules("pythonjsonlogger"),
    "truststore",
]
datas = collect_data_files("massugc_logging", excludes=["**/_pyinstaller/*"])
