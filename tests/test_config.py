"""Loading logging.yaml: environments, ${VAR} expansion, and messages that say where and what."""

from __future__ import annotations

import json
import logging
import logging.handlers
from pathlib import Path
from typing import Any

import pytest
from fakeapi import FakeApi

from massugc_logging import CloudHandler, ConfigError, configure
from massugc_logging.config import expand, load_config, load_environment
from massugc_logging.testing import CaptureHandler

REFERENCE_YAML = Path(__file__).resolve().parent.parent / "logging.yaml"
JOB = {"event_type": "video_generation", "job_name": "Spring", "product": "Glow Serum",
       "run_id": "run-config-1", "workflow_type": "avatar"}


@pytest.fixture
def app_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api: FakeApi, key: str) -> Path:
    """The variables the reference config reads, all pointing into tmp_path or the fake API."""
    monkeypatch.setenv("MASSUGC_API_URL", api.url)
    monkeypatch.setenv("MASSUGC_API_KEY", key)
    monkeypatch.setenv("MASSUGC_SPOOL_PATH", str(tmp_path / "spool.sqlite3"))
    monkeypatch.setenv("MASSUGC_LOG_DIR", str(tmp_path / "logs"))
    return tmp_path


def jobs_handlers(kind: type) -> list[Any]:
    return [h for h in logging.getLogger("massugc.jobs").handlers if isinstance(h, kind)]


def all_handlers() -> list[logging.Handler]:
    found = list(logging.getLogger().handlers)
    for lg in logging.Logger.manager.loggerDict.values():
        if isinstance(lg, logging.Logger):
            found.extend(lg.handlers)
    return found


# -- the three environments of the reference logging.yaml -------------------------------


def test_development_sends_job_events_to_the_configured_collector(app_env: Path,
                                                                  api: FakeApi) -> None:
    """development: massugc.jobs goes to a CloudHandler at MASSUGC_API_URL, root to console."""
    configure(REFERENCE_YAML, env="development")
    cloud = jobs_handlers(CloudHandler)
    assert len(cloud) == 1
    assert [type(h) for h in logging.getLogger().handlers] == [logging.StreamHandler]
    logging.getLogger("massugc.jobs").error("job failed",
                                            extra={**JOB, "error_message": "boom"})
    assert cloud[0].force_flush(10)
    assert api.captured[0].json["job_data"]["run_id"] == "run-config-1"


def test_test_environment_captures_in_memory_and_sends_nothing(app_env: Path,
                                                               api: FakeApi) -> None:
    """test: events land in CaptureHandler.events; no cloud handler, no request, no spool."""
    configure(REFERENCE_YAML, env="test")
    capture = jobs_handlers(CaptureHandler)
    assert len(capture) == 1
    logging.getLogger("massugc.jobs").error("job failed",
                                            extra={**JOB, "error_message": "boom"})
    events = capture[0].events
    assert events[0]["job_data"]["success"] is False
    assert events[0]["job_data"]["error_message"] == "boom"
    assert not any(isinstance(h, CloudHandler) for h in all_handlers())
    assert api.captured == []
    assert not (app_env / "spool.sqlite3").exists()


def test_production_writes_json_lines_to_the_rotating_file_in_log_dir(app_env: Path) -> None:
    """production: a RotatingFileHandler in MASSUGC_LOG_DIR gets one JSON object per record."""
    configure(REFERENCE_YAML, env="production")
    files = [h for h in logging.getLogger().handlers
             if isinstance(h, logging.handlers.RotatingFileHandler)]
    assert len(files) == 1
    path = app_env / "logs" / "massugc.jsonl"
    assert Path(files[0].baseFilename) == path
    logging.getLogger("massugc.app").warning("disk almost full", extra={"free_mb": 12})
    files[0].flush()
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert records[-1]["message"] == "disk almost full"
    assert records[-1]["level"] == "WARNING"
    assert records[-1]["logger"] == "massugc.app"
    assert records[-1]["free_mb"] == 12
    assert "time" in records[-1]


def test_production_sends_job_events_to_the_cloud(app_env: Path, api: FakeApi) -> None:
    """production: a job event reaches the API with the production extra fields allowed."""
    configure(REFERENCE_YAML, env="production")
    cloud = jobs_handlers(CloudHandler)
    logging.getLogger("massugc.jobs").info("job succeeded",
                                           extra={**JOB, "output_path": "out.mp4",
                                                  "useExactScript": True})
    assert cloud[0].force_flush(10)
    job = api.captured[0].json["job_data"]
    assert job["success"] is True
    assert job["useExactScript"] is True


def test_massugc_env_chooses_the_environment(app_env: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Without env=, MASSUGC_ENV picks the environment."""
    monkeypatch.setenv("MASSUGC_ENV", "test")
    configure(REFERENCE_YAML)
    assert len(jobs_handlers(CaptureHandler)) == 1
    assert jobs_handlers(CloudHandler) == []


def test_env_argument_wins_over_massugc_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """configure(env=...) overrides MASSUGC_ENV."""
    monkeypatch.setenv("MASSUGC_ENV", "production")
    _config, name = load_environment(REFERENCE_YAML, env="test")
    assert name == "test"


def test_default_environment_is_used_when_nothing_says_otherwise() -> None:
    """No env= and no MASSUGC_ENV: the file's default_environment (development)."""
    _config, name = load_environment(REFERENCE_YAML)
    assert name == "development"


def test_environ_argument_feeds_expansion(tmp_path: Path) -> None:
    """configure/load_config(environ=...) values are used for ${VAR} expansion."""
    config = load_config(REFERENCE_YAML, env="production",
                         environ={"MASSUGC_LOG_DIR": str(tmp_path / "elsewhere")})
    assert config["handlers"]["json_file"]["filename"] == str(
        tmp_path / "elsewhere" / "massugc.jsonl")


def test_configure_creates_the_log_directory(tmp_path: Path) -> None:
    """configure makes the directory of a file handler, which dictConfig would fail on."""
    config = tmp_path / "logging.yaml"
    target = tmp_path / "deep" / "er" / "app.log"
    config.write_text("version: 1\nhandlers:\n  f:\n    class: logging.FileHandler\n"
                      f"    filename: {target}\nroot:\n  handlers: [f]\n", encoding="utf-8")
    configure(config)
    logging.getLogger("massugc.app").warning("hello")
    assert target.parent.is_dir()


def test_plain_dictconfig_file_is_used_as_it_is(tmp_path: Path) -> None:
    """A file with a top-level 'version: 1' and no environments is one dictConfig."""
    config = tmp_path / "logging.yaml"
    config.write_text("version: 1\nroot:\n  level: ${LEVEL:-WARNING}\n", encoding="utf-8")
    assert load_config(config)["root"] == {"level": "WARNING"}


# -- messages: the file, the line, what to do -------------------------------------------


def test_unknown_environment_names_the_file_line_and_choices() -> None:
    """An unknown environment: the file, the line of environments:, the known names."""
    with pytest.raises(ConfigError) as info:
        configure(REFERENCE_YAML, env="staging")
    message = str(info.value)
    assert message.startswith(f"{REFERENCE_YAML}, line ")
    assert "no environment named 'staging'" in message
    assert "development, test, production" in message
    assert "MASSUGC_ENV" in message


def test_yaml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    """Broken YAML: the file, the line and column, and to fix the syntax there."""
    config = tmp_path / "logging.yaml"
    config.write_text("version: 1\nroot:\n  level: INFO\n\thandlers: []\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    message = str(info.value)
    assert message.startswith(f"{config}, line 4")
    assert "Fix the syntax" in message


def test_missing_file_says_what_to_pass(tmp_path: Path) -> None:
    """A missing file: names it and says to pass the path or set MASSUGC_LOGGING_CONFIG."""
    with pytest.raises(ConfigError, match="MASSUGC_LOGGING_CONFIG"):
        load_config(tmp_path / "absent.yaml")


def test_empty_file_says_what_it_needs(tmp_path: Path) -> None:
    """An empty file: says it is empty and what to put in it."""
    config = tmp_path / "logging.yaml"
    config.write_text("# nothing yet\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"the file is empty.*environments:"):
        load_config(config)


def test_environment_without_version_names_its_line(tmp_path: Path) -> None:
    """An environment lacking 'version: 1': the file, its line, and to add it."""
    config = tmp_path / "logging.yaml"
    config.write_text("environments:\n  development:\n    version: 1\n"
                      "  test:\n    root: {level: INFO}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(config, env="test")
    assert str(info.value).startswith(f"{config}, line 4: environment 'test' needs 'version: 1'")


def test_unset_variable_names_the_file_line_and_default_syntax(tmp_path: Path) -> None:
    """${VAR} unset with no default: the file, the line, the variable and how to default it."""
    config = tmp_path / "logging.yaml"
    config.write_text("version: 1\nroot:\n  level: INFO\nhandlers:\n  f:\n"
                      "    class: logging.FileHandler\n    filename: ${NOT_SET_ANYWHERE}/a.log\n",
                      encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    message = str(info.value)
    assert message.startswith(f"{config}, line 7: ")
    assert "NOT_SET_ANYWHERE is not set" in message
    assert "${NOT_SET_ANYWHERE:-default}" in message


def test_no_environment_chosen_says_how_to_choose(tmp_path: Path) -> None:
    """No env, no MASSUGC_ENV, no default_environment: says the three ways to choose."""
    config = tmp_path / "logging.yaml"
    config.write_text("environments:\n  a:\n    version: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"MASSUGC_ENV.*default_environment"):
        load_config(config)


def test_dictconfig_rejection_names_the_file_and_the_real_cause(tmp_path: Path) -> None:
    """dictConfig refusing a handler: the file, dictConfig's reason with its cause, a hint."""
    config = tmp_path / "logging.yaml"
    config.write_text("version: 1\nhandlers:\n  h:\n    class: no.such.Handler\n",
                      encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        configure(config)
    message = str(info.value)
    assert message.startswith(f"{config}: dictConfig rejected the configuration")
    assert "Unable to configure handler 'h'" in message
    assert "No module named 'no'" in message
    assert "massugc-logging check" in message


# -- ${VAR} and ${VAR:-default} ---------------------------------------------------------


def test_expand_replaces_a_set_variable() -> None:
    """${VAR} is replaced by its value."""
    assert expand("${A}/logs", {"A": "/var"}) == "/var/logs"


def test_expand_uses_the_default_when_unset() -> None:
    """${VAR:-default} gives the default when VAR is not set."""
    assert expand("${A:-/tmp}/logs", {}) == "/tmp/logs"


def test_expand_uses_the_default_when_empty() -> None:
    """${VAR:-default} gives the default when VAR is set but empty, as in the shell."""
    assert expand("${A:-fallback}", {"A": ""}) == "fallback"


def test_expand_keeps_an_empty_value_without_default() -> None:
    """${VAR} set to the empty string expands to the empty string."""
    assert expand("x${A}y", {"A": ""}) == "xy"


def test_expand_prefers_the_value_over_the_default() -> None:
    """${VAR:-default} gives VAR's value when it is set."""
    assert expand("${A:-no}", {"A": "https://api.example.com"}) == "https://api.example.com"


def test_expand_allows_an_empty_default() -> None:
    """${VAR:-} gives the empty string."""
    assert expand("${A:-}", {}) == ""


def test_expand_unset_without_default_raises_with_the_fix() -> None:
    """${VAR} unset with no default raises ConfigError naming VAR, where, and the fix."""
    with pytest.raises(ConfigError) as info:
        expand({"handlers": {"f": {"filename": "${LOGDIR}/x"}}}, {})
    message = str(info.value)
    assert "handlers.f.filename" in message
    assert "LOGDIR is not set" in message
    assert "${LOGDIR:-default}" in message


def test_expand_reads_a_whole_reference_as_a_yaml_scalar() -> None:
    """A value that is one reference becomes a number, a bool or None after expansion."""
    assert expand("${T:-5}", {}) == 5
    assert expand("${T:-3.05}", {}) == 3.05
    assert expand("${FLAG}", {"FLAG": "true"}) is True
    assert expand("${SPOOL:-null}", {}) is None


def test_expand_keeps_text_around_a_reference_as_text() -> None:
    """A reference inside longer text stays text, even if the value looks like a number."""
    assert expand("port-${P}", {"P": "8080"}) == "port-8080"


def test_expand_keeps_a_reference_that_looks_like_a_list_as_text() -> None:
    """A whole reference whose value looks like a YAML list stays a string."""
    assert expand("${X}", {"X": "[1, 2]"}) == "[1, 2]"


def test_expand_walks_nested_mappings_and_lists() -> None:
    """Every string in nested dicts and lists is expanded; other values are left alone."""
    value = {"a": ["${A}", {"b": "${B:-two}"}], "n": 3, "t": True, "none": None}
    assert expand(value, {"A": "one"}) == {"a": ["one", {"b": "two"}], "n": 3, "t": True,
                                           "none": None}


def test_expand_leaves_bare_dollar_words_alone() -> None:
    """Only ${...} is a reference: $VAR and a lone $ are kept as written."""
    assert expand("$HOME costs $5", {"HOME": "/root"}) == "$HOME costs $5"


def test_expand_replaces_several_references_in_one_string() -> None:
    """Several references in one string are each replaced."""
    assert expand("${A}:${B:-2}", {"A": "1"}) == "1:2"


def test_the_configuration_check_is_a_library_function(tmp_path: Path) -> None:
    """check_configuration gives the CLI's verdict as values: notes and problems."""
    from massugc_logging.checks import check_configuration

    repo = Path(__file__).resolve().parent.parent
    good = check_configuration(repo / "logging.yaml", "test", probe=False)
    assert good.ok and good.environment == "test"
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nhandlers:\n  cloud:\n    class: massugc_logging.CloudHandler\n"
                   "    api_url: http://api.example.com\n    spool_path: null\n"
                   "root:\n  handlers: [cloud]\n", encoding="utf-8")
    verdict = check_configuration(bad, probe=False)
    assert not verdict.ok
    assert any("insecure" in p and "https" in p for p in verdict.problems)


# -- the machine never stops the app ----------------------------------------------------


def test_an_unknown_massugc_env_falls_back_to_the_default_and_says_so_once(
        app_env: Path, monkeypatch: pytest.MonkeyPatch, api: FakeApi,
        capsys: pytest.CaptureFixture[str]) -> None:
    """MASSUGC_ENV=staging (no such environment): the default one is used, cloud reporting
    works, and one warning (on the configured console) names the variable and the fallback."""
    monkeypatch.setenv("MASSUGC_ENV", "staging")
    configure(REFERENCE_YAML)
    (cloud,) = jobs_handlers(CloudHandler)
    logging.getLogger("massugc.jobs").error("job failed", extra={**JOB, "error_message": "x"})
    assert cloud.force_flush(10)
    assert api.captured
    notices = [line for line in capsys.readouterr().err.splitlines() if "MASSUGC_ENV" in line]
    assert len(notices) == 1
    assert "WARNING" in notices[0] and "'development'" in notices[0]


def test_a_frozen_app_with_no_environment_named_runs_production(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """sys.frozen and no MASSUGC_ENV (the desktop shell sets none): production."""
    monkeypatch.setattr("sys.frozen", True, raising=False)
    assert load_environment(REFERENCE_YAML)[1] == "production"
    monkeypatch.setenv("MASSUGC_ENV", "test")
    assert load_environment(REFERENCE_YAML)[1] == "test"


def test_frozen_environment_in_the_file_chooses_the_frozen_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """frozen_environment: names the environment of a frozen app; unfrozen, the default."""
    config = tmp_path / "logging.yaml"
    config.write_text("default_environment: dev\nfrozen_environment: shipped\nenvironments:\n"
                      "  dev: {version: 1}\n  shipped: {version: 1}\n", encoding="utf-8")
    assert load_environment(config)[1] == "dev"
    monkeypatch.setattr("sys.frozen", True, raising=False)
    assert load_environment(config)[1] == "shipped"


def test_a_log_directory_that_cannot_be_created_leaves_that_handler_out(
        app_env: Path, monkeypatch: pytest.MonkeyPatch, api: FakeApi,
        capsys: pytest.CaptureFixture[str]) -> None:
    """production with MASSUGC_LOG_DIR under a file (as unwritable as a read-only install
    folder, even for root): configure() returns, the JSON file handler is left out with
    one warning, and job events still reach the API."""
    blocker = app_env / "not-a-directory"
    blocker.write_text("x", encoding="utf-8")
    monkeypatch.setenv("MASSUGC_LOG_DIR", str(blocker / "logs"))
    config = configure(REFERENCE_YAML, env="production")
    assert "json_file" not in config["handlers"]
    assert not [h for h in all_handlers() if isinstance(h, logging.FileHandler)]
    (cloud,) = jobs_handlers(CloudHandler)
    logging.getLogger("massugc.jobs").error("job failed", extra={**JOB, "error_message": "x"})
    assert cloud.force_flush(10)
    assert api.captured
    (notice,) = [line for line in capsys.readouterr().err.splitlines() if "json_file" in line]
    assert "MASSUGC_LOG_DIR" in notice


def test_log_files_default_to_the_platforms_user_log_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without MASSUGC_LOG_DIR the JSON file goes to platformdirs' user log directory, not
    to the working directory (the install folder of a shipped app)."""
    import platformdirs

    monkeypatch.delenv("MASSUGC_LOG_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    config = load_config(REFERENCE_YAML, env="production")
    expected = Path(platformdirs.user_log_dir("massugc-logging", appauthor=False))
    assert Path(config["handlers"]["json_file"]["filename"]) == expected / "massugc.jsonl"
    assert str(tmp_path / "state") in str(expected)


def test_a_misspelt_class_still_raises_config_error(tmp_path: Path) -> None:
    """A mistake in the file itself raises, as dictConfig does: developers see it at once."""
    config = tmp_path / "logging.yaml"
    config.write_text("version: 1\nhandlers:\n  cloud:\n    class: massugc_logging.CloudHandlr\n"
                      "root:\n  handlers: [cloud]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="CloudHandlr"):
        configure(config)
