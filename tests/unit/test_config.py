"""Settings precedence (flag > environment > TOML > default), validation and secret handling."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from streams.config import ConfigError, Settings, add_arguments, load_settings


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False)  # as the worker's and slack's parsers
    add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults() -> None:
    s = load_settings(parse([]), env={})
    assert s.window_seconds == 300 and s.broker == "127.0.0.1:9092" and s.metrics_port == 6066


def test_flag_beats_env_beats_file(tmp_path: Path) -> None:
    cfg = tmp_path / "gapwatch.toml"
    cfg.write_text('[gapwatch]\nwindow_seconds = 60\nallowed_lateness_seconds = 5\nbroker = "file:1"\n')
    env = {"GAPWATCH_CONFIG": str(cfg), "GAPWATCH_ALLOWED_LATENESS_SECONDS": "7", "GAPWATCH_BROKER": "env:2"}
    s = load_settings(parse(["--broker", "flag:3"]), env=env)
    assert s.window_seconds == 60  # file
    assert s.allowed_lateness_seconds == 7.0  # env over file
    assert s.broker == "flag:3"  # flag over env


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GAPWATCH_WINDOW_SECONDS": "five"}, "window_seconds from GAPWATCH_WINDOW_SECONDS: expected int"),
        ({"GAPWATCH_WINDOW_SECONDS": "0"}, "window_seconds must be > 0"),
        ({"GAPWATCH_BROKER": "nohostport"}, "broker must be HOST:PORT"),
        ({"GAPWATCH_CONFIG": "/nonexistent/gapwatch.toml"}, "does not exist"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(parse([]), env=env)


def test_unknown_and_secret_keys_in_file_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('windw_seconds = 60\n')
    with pytest.raises(ConfigError, match="unknown setting 'windw_seconds'"):
        load_settings(parse(["--config", str(cfg)]), env={})
    cfg.write_text('sasl_password = "hunter2"\n')
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings(parse(["--config", str(cfg)]), env={})


def test_secrets_come_from_env_or_file_and_never_show(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    s = load_settings(parse(["--sasl-password-file", str(secret)]), env={"GAPWATCH_API_TOKEN": "zq-t0ken-77"})
    assert s.sasl_password == "s3cret" and s.api_token == "zq-t0ken-77"
    assert "s3cret" not in repr(s) and "zq-t0ken-77" not in repr(s)
    # no flag can carry a secret (it would show in `ps`)
    with pytest.raises(SystemExit):
        parse(["--sasl-password", "x"])


def test_short_group_timeouts_only_on_a_loopback_broker() -> None:
    assert Settings(broker="127.0.0.1:1234").effective_session_timeout == 6.0
    assert Settings(broker="kafka-1:9092,kafka-2:9092").effective_session_timeout == 30.0


KAFKA_VERBS = (
    ["worker"],
    ["simulate", "--scenario", "safari_drop"],
    ["change", "publish"],
    ["reconcile"],
    ["slack"],
)


@pytest.mark.parametrize("verb", KAFKA_VERBS, ids=lambda v: " ".join(v))
def test_every_kafka_verb_takes_the_shared_connection_settings(verb: list[str], tmp_path: Path) -> None:
    from streams import kafka
    from streams.cli import build_parser

    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    flags = ["--broker", "kafka-1:9093", "--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism",
             "SCRAM-SHA-512", "--sasl-username", "gapwatch", "--sasl-password-file", str(secret)]
    s = load_settings(build_parser().parse_args([*verb, *flags]), env={})
    assert kafka.client_options(s) == {
        "bootstrap_servers": "kafka-1:9093", "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "gapwatch", "sasl_plain_password": "s3cret",
    }
    # ... and the same from the environment alone, as a deployment sets them once for all verbs
    env = {"GAPWATCH_BROKER": "kafka-2:9093", "GAPWATCH_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
           "GAPWATCH_SASL_USERNAME": "u", "GAPWATCH_SASL_PASSWORD": "p"}
    s = load_settings(build_parser().parse_args(verb), env=env)
    assert kafka.client_options(s)["bootstrap_servers"] == "kafka-2:9093"
    assert kafka.client_options(s)["sasl_plain_password"] == "p"
    assert s.given >= {"broker", "security_protocol"}


def test_an_empty_flag_is_unset() -> None:
    s = load_settings(parse(["--broker", ""]), env={"GAPWATCH_BROKER": "env:2"})
    assert s.broker == "env:2"
    assert "broker" not in load_settings(parse(["--broker", ""]), env={}).given
