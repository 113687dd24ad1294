"""Load ``logging.yaml``: pick an environment, expand ``${VAR}``, apply dictConfig.

The file holds one standard ``logging.config.dictConfig`` mapping per
environment under ``environments:``. The environment is ``env=``, else
``MASSUGC_ENV``, else, in an app frozen with PyInstaller (``sys.frozen``),
``frozen_environment`` (default ``production``: the desktop shell sets no
variable), else ``default_environment``. A file that is a plain dictConfig
(a top-level ``version: 1``) is used as it is.

``${VAR}`` and ``${VAR:-default}`` are expanded from the environment in every
string. A value that is a single reference is read as a YAML scalar after
expansion, so ``${TIMEOUT:-5}`` is the number 5 and ``${SPOOL:-null}`` is None.
``MASSUGC_LOG_DIR``, when not set, is the platform's user log directory.

Mistakes in the file (its syntax, a misspelt class, a variable it needs and
nobody set) raise :class:`ConfigError` with the file, the line where it can be
known, and what to do, as dictConfig does, so developers see them on their
first run. What only the machine gets wrong never stops the app: an unknown
``MASSUGC_ENV`` falls back to the default environment, and a log file that
cannot be written leaves its handler out; each is said once, on the
``massugc_logging`` logger, once the configuration is applied.
"""

from __future__ import annotations

import atexit
import logging.config
import logging.handlers
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional, Union

import yaml

from massugc_logging.pipeline._signals import threads_born_without_app_signals

_PACKAGE_LOGGER = "massugc_logging"
ENV_VARIABLE = "MASSUGC_ENV"
#: libyaml's safe loader when PyYAML was built with it (several times faster), else PyYAML's.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
LOG_DIR_VARIABLE = "MASSUGC_LOG_DIR"
#: The environment of a frozen app when nothing names one, unless the file says otherwise.
DEFAULT_FROZEN_ENVIRONMENT = "production"
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """The logging configuration cannot be used; the message says where and what to do."""


class _UnsetVariable(ConfigError):
    """A ``${VAR}`` without a default names a variable that is not set."""

    def __init__(self, message: str, name: str) -> None:
        super().__init__(message)
        self.name = name


def default_config_path() -> Path:
    """``MASSUGC_LOGGING_CONFIG`` if set, else ``logging.yaml`` in the working directory."""
    return Path(os.environ.get("MASSUGC_LOGGING_CONFIG") or "logging.yaml")


def packaged_config_path() -> Path:
    """The reference ``logging.yaml`` shipped in the package (a copy of the repository's)."""
    return Path(__file__).resolve().parent / "data" / "logging.yaml"


def bundled_beside_frozen_app(path: Path) -> Path:
    """For a relative ``path`` that is not in the working directory of a frozen app
    (PyInstaller): the copy beside the executable, else the one bundled inside it
    (``--add-data logging.yaml:.``); otherwise ``path`` unchanged."""
    if path.is_absolute() or path.exists() or not getattr(sys, "frozen", False):
        return path
    places = [Path(sys.executable).resolve().parent]
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        places.append(Path(bundle))
    for place in places:
        if (place / path).is_file():
            return place / path
    return path


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file. Pass the path of your logging.yaml, or set "
            "MASSUGC_LOGGING_CONFIG"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror}); check its permissions") \
            from None
    try:
        return yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"{path}{where}: invalid YAML ({problem}). Fix the syntax there; indentation "
            "must use spaces"
        ) from None


def _line_where(path: Path, found: Callable[[str], bool]) -> str:
    """``, line N`` of the first line for which ``found(line)`` holds, for messages."""
    try:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if found(line):
                return f", line {number}"
    except (OSError, UnicodeDecodeError):
        pass
    return ""


def _line_of(path: Path, key: str, after: Optional[str] = None) -> str:
    """``, line N`` where ``key:`` first appears (after the line of ``after:``, if given)."""
    seen_after = after is None

    def found(line: str) -> bool:
        nonlocal seen_after
        if not seen_after:
            seen_after = line.strip().startswith(f"{after}:")
            return False
        return line.strip().startswith(f"{key}:")

    return _line_where(path, found)


def select_environment(document: Any, path: Path, env: Optional[str], *,
                       strict: bool = True) -> tuple[dict[str, Any], str, list[str]]:
    """The dictConfig mapping for ``env``, the environment's name, and notices.

    With ``strict=False`` an unknown name from ``MASSUGC_ENV`` falls back to the default
    environment (the frozen one in a frozen app) and the fallback is returned as a notice;
    an unknown ``env`` argument is a mistake in code and always raises.
    """
    if document is None:
        raise ConfigError(f"{path}: the file is empty. Give it an 'environments:' section "
                          "(see the reference logging.yaml) or a dictConfig 'version: 1'")
    if not isinstance(document, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level, got "
                          f"{type(document).__name__}. Give it an 'environments:' section "
                          "(see the reference logging.yaml) or a dictConfig 'version: 1'")
    if "environments" not in document:
        if "version" in document:
            return dict(document), env or "default", []
        raise ConfigError(
            f"{path}: has neither 'environments:' nor a dictConfig 'version: 1'. Add one "
            "environments: section (see the reference logging.yaml)"
        )
    environments = document["environments"]
    if not isinstance(environments, Mapping) or not environments:
        raise ConfigError(f"{path}{_line_of(path, 'environments')}: 'environments' must map "
                          "names (development, test, production...) to dictConfig mappings; "
                          "see the reference logging.yaml")
    fallback, notices = _default_environment(document, environments, path)
    from_variable = os.environ.get(ENV_VARIABLE) if not env else None
    name = env or from_variable or fallback
    if not name:
        raise ConfigError(f"{path}: no environment chosen; pass env=... (or --env), "
                          f"set {ENV_VARIABLE}, or add default_environment: to the file")
    if name not in environments:
        known = ", ".join(str(k) for k in environments)
        if not strict and from_variable and fallback in environments:
            notices.append(f"{ENV_VARIABLE} names no environment of {path} ({known}); using "
                           f"the {fallback!r} environment instead")
            name = fallback
        else:
            raise ConfigError(
                f"{path}{_line_of(path, 'environments')}: no environment named {name!r}; "
                f"choose one of {known} (with env=..., --env or {ENV_VARIABLE}), or add "
                f"{name!r} under environments:"
            )
    chosen = environments[name]
    if not isinstance(chosen, Mapping):
        raise ConfigError(f"{path}{_line_of(path, str(name), 'environments')}: environment "
                          f"{name!r} must be a dictConfig mapping (with 'version: 1', "
                          "'handlers:'...); see the reference logging.yaml")
    return dict(chosen), str(name), notices


def _default_environment(document: Mapping[str, Any], environments: Mapping[str, Any],
                         path: Path) -> tuple[Optional[str], list[str]]:
    """The environment used when none is named: ``frozen_environment`` (default
    ``production``, if the file has one) in a frozen app, else ``default_environment``;
    and a notice when a frozen app's environment is missing."""
    notices: list[str] = []
    if getattr(sys, "frozen", False):
        frozen = document.get("frozen_environment", DEFAULT_FROZEN_ENVIRONMENT)
        if frozen in environments:
            return str(frozen), notices
        notices.append(f"{path}: this app is frozen, but the file has no {frozen!r} "
                       "environment (frozen_environment); using default_environment")
    default = document.get("default_environment")
    return (None if default is None else str(default)), notices


def default_log_dir() -> str:
    """The platform's user log directory for this package (``~/Library/Logs/massugc-logging``
    on macOS, ``%LOCALAPPDATA%\\massugc-logging\\Logs`` on Windows, ``~/.local/state/
    massugc-logging/log`` on Linux): what ``MASSUGC_LOG_DIR`` is when not set."""
    import platformdirs  # noqa: PLC0415 - only when a configuration names the variable

    return str(platformdirs.user_log_dir("massugc-logging", appauthor=False))


class _Environ(dict):  # type: ignore[type-arg]
    """The process environment for ``${VAR}`` expansion, with computed defaults for the
    variables this package documents (computed only when a file names them)."""

    def get(self, key: Any, default: Any = None) -> Any:
        found = super().get(key)
        if not found and key == LOG_DIR_VARIABLE:  # unset or empty: never the root
            found = self[key] = default_log_dir()
        return default if found is None else found


def expand(value: Any, environ: Mapping[str, str], where: str = "") -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string of ``value``."""
    if isinstance(value, Mapping):
        return {k: expand(v, environ, f"{where}.{k}" if where else str(k))
                for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, environ, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = environ.get(name)
        if found is not None and (found != "" or default is None):
            return found
        if default is not None:
            return default
        raise _UnsetVariable(
            f"{where}: environment variable {name} is not set; set it, or write "
            f"${{{name}:-default}} to give a default", name
        )

    whole = _REFERENCE.fullmatch(value) is not None
    result = _REFERENCE.sub(substitute, value)
    if whole and result:
        try:
            scalar = yaml.safe_load(result)
        except yaml.YAMLError:
            return result
        if scalar is None or isinstance(scalar, (bool, int, float)):
            return scalar
    return result


def describe_dictconfig_error(exc: BaseException) -> str:
    """dictConfig's message with its cause, which holds the real reason, said once."""
    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    if cause is not None:
        detail = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
        if detail not in text:
            text = f"{text} ({detail})"
    return text


def _prepare_files(config: dict[str, Any], where: Union[str, Path]) -> list[str]:
    """Create the directories of file handlers, which dictConfig would fail on, and leave
    out the handlers whose file cannot be written here (a read-only install folder); return
    what was left out, in words."""
    handlers = config.get("handlers")
    if not isinstance(handlers, dict):
        return []
    notices = []
    for name, spec in list(handlers.items()):
        if not (isinstance(spec, Mapping) and isinstance(spec.get("filename"), str)):
            continue
        target = Path(spec["filename"]).expanduser()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "a", encoding=spec.get("encoding") or "utf-8"):
                pass
        except OSError as exc:
            _leave_out_handler(config, str(name))
            notices.append(
                f"{where}: the log file {target} cannot be written ({type(exc).__name__}: "
                f"{exc.strerror or exc}); handler {name!r} is left out and the rest of the "
                f"logging works. Point {LOG_DIR_VARIABLE} (or the handler's filename) at a "
                "writable directory")
    return notices


def _leave_out_handler(config: dict[str, Any], name: str) -> None:
    """Remove handler ``name`` from the configuration and from everything that uses it."""
    config["handlers"].pop(name, None)
    users = [config.get("root")]
    loggers = config.get("loggers")
    if isinstance(loggers, Mapping):
        users.extend(loggers.values())
    users.extend(h for h in config["handlers"].values() if isinstance(h, Mapping))
    for user in users:
        if isinstance(user, dict) and isinstance(user.get("handlers"), list):
            user["handlers"] = [h for h in user["handlers"] if h != name]
        if isinstance(user, dict) and user.get("target") == name:
            del user["target"]  # a MemoryHandler buffering for it: it keeps its buffer


def load_environment(
    path: Union[str, Path, None] = None,
    env: Optional[str] = None,
    environ: Optional[Mapping[str, str]] = None,
    *,
    expand_variables: bool = True,
    notices: Optional[list[str]] = None,
) -> tuple[dict[str, Any], str]:
    """Read ``path``, choose the environment, expand variables; return it and its name.

    With ``expand_variables=False`` the mapping is returned as written, unchecked. Given
    a ``notices`` list, an unknown ``MASSUGC_ENV`` falls back to the default environment
    and the fallback is appended to it; without one, it raises.
    """
    config_path = bundled_beside_frozen_app(
        Path(path) if path is not None else default_config_path())
    merged_env = _Environ(os.environ)
    if environ is not None:
        merged_env.update(environ)
    document = _read_yaml(config_path)
    chosen, name, said = select_environment(document, config_path, env,
                                            strict=notices is None)
    if notices is not None:
        notices.extend(said)
    if not expand_variables:
        return chosen, name
    try:
        expanded = expand(chosen, merged_env, name)
    except _UnsetVariable as exc:
        used = re.compile(r"\$\{" + re.escape(exc.name) + r"[:}]")
        line = _line_where(config_path, lambda text: used.search(text) is not None)
        raise ConfigError(f"{config_path}{line}: {exc}") from None
    if not isinstance(expanded, dict) or expanded.get("version") != 1:
        line = _line_of(config_path, name, "environments") if "environments" in document else ""
        raise ConfigError(f"{config_path}{line}: environment {name!r} needs 'version: 1' "
                          "(the dictConfig schema version); add it to that mapping")
    return expanded, name


def load_config(
    path: Union[str, Path, None] = None,
    env: Optional[str] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> dict[str, Any]:
    """Read ``path``, choose the environment, expand variables; return the dictConfig."""
    return load_environment(path, env, environ)[0]


def configure(
    path: Union[str, Path, None] = None,
    env: Optional[str] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> dict[str, Any]:
    """Load the configuration and apply it with ``logging.config.dictConfig``.

    Returns the dictConfig that was applied. Raises :class:`ConfigError` for a mistake
    in the file; what only this machine gets wrong (an unknown ``MASSUGC_ENV``, a log
    directory that cannot be written) is said once on the ``massugc_logging`` logger
    after the configuration is applied, and the app carries on.
    """
    notices: list[str] = []
    config = load_environment(path, env, environ, notices=notices)[0]
    notices.extend(_prepare_files(config, path if path is not None else default_config_path()))
    try:
        logging.config.dictConfig(config)
    except (ValueError, TypeError, AttributeError, ImportError, KeyError) as exc:
        where = path if path is not None else default_config_path()
        raise ConfigError(f"{where}: dictConfig rejected the configuration: "
                          f"{describe_dictconfig_error(exc)}. Check the class names and "
                          "keyword arguments there ('massugc-logging check' explains more)") \
            from None
    _start_queue_listeners()
    for notice in notices:
        logging.getLogger(_PACKAGE_LOGGER).warning("%s", notice)
    return config


def _start_queue_listeners() -> None:
    """Start the listeners dictConfig makes for ``QueueHandler`` entries (Python 3.12+).

    dictConfig creates them but leaves starting and stopping them to the
    application; they are started here and stopped at exit, before logging's
    own shutdown flushes and closes the handlers behind them.
    """
    for ref in list(getattr(logging, "_handlerList", [])):
        handler = ref() if callable(ref) else None
        listener = getattr(handler, "listener", None)
        if isinstance(handler, logging.handlers.QueueHandler) and listener is not None \
                and getattr(listener, "_thread", None) is None:
            with threads_born_without_app_signals():
                listener.start()
            atexit.register(_stop_listener, listener)


def _stop_listener(listener: logging.handlers.QueueListener) -> None:
    """Stop a listener unless the application already did (stop() is not idempotent)."""
    if getattr(listener, "_thread", None) is not None:
        listener.stop()
