"""Worker settings: command-line flag > environment variable > TOML config file > default.

Every setting has one name. Its flag is `--name-with-dashes`, its environment variable
`GAPWATCH_NAME_IN_CAPS`, its TOML key `name_with_underscores` (top level or under
`[gapwatch]`). Secrets (SASL password, API token) are read from the environment or a file
and are never printed (`repr(settings)` leaves them out).
"""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["Settings", "add_arguments", "load_settings", "ConfigError", "kafka_security_options", "SECURITY_SETTINGS"]

#: the settings any Kafka client of gapwatch needs to reach a secured cluster
SECURITY_SETTINGS = ("security_protocol", "sasl_mechanism", "sasl_username", "sasl_password_file", "ssl_cafile")


class ConfigError(ValueError):
    """A setting has a bad value; the message names the setting and where it came from."""


@dataclass
class Settings:
    broker: str = field(default="127.0.0.1:9092", metadata={"help": "Kafka bootstrap HOST:PORT (comma-separated for several)"})
    window_seconds: int = field(default=300, metadata={"help": "window size in seconds of event time"})
    allowed_lateness_seconds: float = field(default=120.0, metadata={"help": "how late (event time) an event may be and still count in its window"})
    max_delay_seconds: float = field(default=26 * 3600.0, metadata={"help": "the longest reporting delay waited for: a platform event later than the allowed lateness but within its channel's learned delay (at most this) counts in its own window; a platform's windows are judged at most this long after they end (0: no corrections, late is late)"})
    arrival_time: str = field(default="order", metadata={"help": "what a platform event without arrived_at says about when it arrived, for its reporting delay: 'order' (its place in the arrival order) or 'record' (its Kafka record timestamp; a replay that re-publishes old events must keep their timestamps)"})
    dedupe_horizon_seconds: float = field(default=86_400.0, metadata={"help": "how long (event time) event and order ids are remembered for dedupe and order matching"})
    metrics_port: int = field(default=6066, metadata={"help": "port of the worker's web server: /metrics, /healthz, /readyz, POST /changes"})
    web_host: str = field(default="127.0.0.1", metadata={"help": "address the web server binds to (0.0.0.0 in containers)"})
    app_id: str = field(default="gapwatch", metadata={"help": "Faust app id: consumer group and changelog topic prefix"})
    partitions: int = field(default=8, metadata={"help": "partitions for topics gapwatch creates (existing topics keep theirs)"})
    backend_topic: str = field(default="backend-events", metadata={"help": "topic of backend (truth) events"})
    platform_topic: str = field(default="platform-events", metadata={"help": "topic of ad-platform events"})
    changes_topic: str = field(default="changes", metadata={"help": "topic of change events (deploys, tag publishes, ...)"})
    feedback_topic: str = field(default="gapwatch-feedback", metadata={"help": "compacted topic of ack / expected / false feedback on alerts (key alert_id)"})
    windows_topic: str = field(default="gapwatch-windows", metadata={"help": "topic for closed windows"})
    alerts_topic: str = field(default="gap-alerts", metadata={"help": "topic for gap alerts"})
    dlq_topic: str = field(default="gapwatch-dlq", metadata={"help": "dead-letter topic for invalid events"})
    partials_topic: str = field(default="gapwatch-partials", metadata={"help": "internal topic: per-partition window partials"})
    false_alarms_per_30_days: float = field(default=1.0, metadata={"help": "expected false alarms per segment per 30 days (calibrates the detectors)"})
    change_lookback_days: float = field(default=30.0, metadata={"help": "how long change events are kept for annotation"})
    batch_size: int = field(default=5_000, metadata={"help": "max events of one partition the worker counts as one chunk (one state write)"})
    tick_seconds: float = field(default=1.0, metadata={"help": "how often windows are checked for closing"})
    idle_partition_seconds: float = field(default=10.0, metadata={"help": "an input partition with nothing to read for this long (wall clock) may be idle"})
    idle_input_event_seconds: float = field(default=3600.0, metadata={"help": "... and only once the other input is this far ahead in event time; then windows close without it"})
    max_input_skew_seconds: float = field(default=3 * 3600.0, metadata={"help": "an input partition this far ahead of the other in event time is paused until the other catches up (bounds open windows during backfills)"})
    max_platforms: int = field(default=20, metadata={"help": "distinct platform names kept apart (state and metric labels); more count as 'other'"})
    max_event_names: int = field(default=20, metadata={"help": "distinct event names kept apart (state and metric labels); more count as 'other'"})
    max_message_bytes: int = field(default=1024 * 1024, metadata={"help": "largest message the worker produces (the producer's max_request_size; the brokers' message.max.bytes must allow it)"})
    commit_interval_seconds: float = field(default=1.0, metadata={"help": "how often consumed offsets are committed (a restart re-reads at most this much; counts stay exact)"})
    commit_every_events: int = field(default=10_000, metadata={"help": "also commit after this many processed events (a restart re-reads at most this many; counts stay exact)"})
    session_timeout_seconds: float = field(default=0.0, metadata={"help": "Kafka group session timeout (0 = 6 s on a loopback broker, else 30 s)"})
    data_dir: str = field(default="", metadata={"help": "directory for Faust's data (default: a temp dir)"})
    log_level: str = field(default="warning", metadata={"help": "worker log level"})
    security_protocol: str = field(default="PLAINTEXT", metadata={"help": "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"})
    sasl_mechanism: str = field(default="", metadata={"help": "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"})
    sasl_username: str = field(default="", metadata={"help": "SASL user name"})
    sasl_password_file: str = field(default="", metadata={"help": "file holding the SASL password (or env GAPWATCH_SASL_PASSWORD)"})
    ssl_cafile: str = field(default="", metadata={"help": "CA bundle for TLS to the brokers"})
    api_token_file: str = field(default="", metadata={"help": "file holding the bearer token for POST /changes and POST /alerts/{id}/{action} (or env GAPWATCH_API_TOKEN)"})
    # secrets, never from flags (they would show in `ps`)
    sasl_password: str = field(default="", repr=False, metadata={"secret": True})
    api_token: str = field(default="", repr=False, metadata={"secret": True})
    #: names of the settings given by a flag, the environment or the config file (not defaults)
    given: frozenset[str] = field(default=frozenset(), repr=False, compare=False, metadata={"internal": True})

    @property
    def loopback_broker(self) -> bool:
        hosts = [h.strip().rsplit(":", 1)[0] for h in self.broker.split(",")]
        return all(h in ("127.0.0.1", "localhost", "::1", "[::1]") for h in hosts)

    @property
    def effective_session_timeout(self) -> float:
        if self.session_timeout_seconds > 0:
            return self.session_timeout_seconds
        return 6.0 if self.loopback_broker else 30.0

    def validate(self) -> None:
        if self.window_seconds <= 0:
            raise ConfigError("window_seconds must be > 0")
        if self.allowed_lateness_seconds < 0:
            raise ConfigError("allowed_lateness_seconds must be >= 0")
        if self.max_delay_seconds < 0:
            raise ConfigError("max_delay_seconds must be >= 0")
        if self.arrival_time not in ("order", "record"):
            raise ConfigError(f"arrival_time must be 'order' or 'record', got {self.arrival_time!r}")
        if not (0 <= self.metrics_port < 65536):
            raise ConfigError("metrics_port must be a TCP port")
        if self.false_alarms_per_30_days <= 0:
            raise ConfigError("false_alarms_per_30_days must be > 0")
        if self.partitions < 1:
            raise ConfigError("partitions must be >= 1")
        if self.max_platforms < 1 or self.max_event_names < 1:
            raise ConfigError("max_platforms and max_event_names must be >= 1")
        if self.max_message_bytes < 256 * 1024:
            raise ConfigError("max_message_bytes must be >= 262144 (one group's detector state is stored as one message)")
        if not self.broker or ":" not in self.broker:
            raise ConfigError(f"broker must be HOST:PORT, got {self.broker!r}")


def _setting_fields() -> list[Any]:
    return [f for f in fields(Settings) if not f.metadata.get("internal")]


def _public_fields() -> list[Any]:
    return [f for f in _setting_fields() if not f.metadata.get("secret")]


def add_arguments(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """Add one flag per setting; defaults stay None so lower layers can fill them in."""
    parser.add_argument("--config", metavar="FILE", help="TOML config file (env GAPWATCH_CONFIG)")
    for f in _public_fields():
        if only is not None and f.name not in only:
            continue
        env = "GAPWATCH_" + f.name.upper()
        kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str}[f.type]
        parser.add_argument(
            "--" + f.name.replace("_", "-"), type=kind, default=None, metavar=f.name.split("_")[-1].upper(),
            help=f"{f.metadata.get('help', '')} [env {env}; default {f.default!r}]",
        )


def _coerce(name: str, raw: Any, kind: type, source: str) -> Any:
    try:
        if kind is bool:
            return str(raw).lower() in ("1", "true", "yes", "on")
        return kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} from {source}: expected {kind.__name__}, got {raw!r}") from None


def load_settings(args: argparse.Namespace | None = None, env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ) if env is None else env
    values: dict[str, Any] = {}
    config_path = (getattr(args, "config", None) if args else None) or env.get("GAPWATCH_CONFIG")
    types = {f.name: (f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str}[f.type]) for f in _setting_fields()}
    if config_path:
        path = Path(config_path)
        try:
            doc = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        table = doc.get("gapwatch", doc)
        for key, raw in table.items():
            name = key.replace("-", "_")
            if name not in types or name in ("sasl_password", "api_token"):
                raise ConfigError(f"config file {path}: unknown setting {key!r}")
            values[name] = _coerce(name, raw, types[name], str(path))
    for f in _setting_fields():
        raw = env.get("GAPWATCH_" + f.name.upper())
        if raw is not None and raw != "":
            values[f.name] = _coerce(f.name, raw, types[f.name], "GAPWATCH_" + f.name.upper())
    if args is not None:
        for f in _public_fields():
            raw = getattr(args, f.name, None)
            if raw is not None and raw != "":  # an empty flag is unset, as an empty variable is
                values[f.name] = raw
    settings = Settings(**values, given=frozenset(values))
    if not settings.sasl_password and settings.sasl_password_file:
        settings.sasl_password = _read_secret(settings.sasl_password_file, "sasl_password_file")
    if not settings.api_token and settings.api_token_file:
        settings.api_token = _read_secret(settings.api_token_file, "api_token_file")
    settings.validate()
    return settings


def _read_secret(path: str, name: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None


def kafka_security_options(s: Settings) -> dict[str, Any]:
    """aiokafka client keyword arguments for the configured security protocol (none for PLAINTEXT)."""
    proto = s.security_protocol.upper()
    if proto == "PLAINTEXT":
        return {}
    if proto not in ("SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        raise ConfigError(f"security_protocol must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, got {proto!r}")
    import ssl

    kw: dict[str, Any] = {"security_protocol": proto}
    if "SSL" in proto:
        kw["ssl_context"] = ssl.create_default_context(cafile=s.ssl_cafile or None)
    if proto.startswith("SASL"):
        kw.update(sasl_mechanism=s.sasl_mechanism.upper() or "PLAIN", sasl_plain_username=s.sasl_username,
                  sasl_plain_password=s.sasl_password)
    return kw
