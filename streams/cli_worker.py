"""`gapwatch worker`: the Faust worker (ingest, windows, detection, alerts, /metrics)."""

from __future__ import annotations

import argparse

from streams.config import add_arguments, load_settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "worker",
        help="run the gapwatch worker against a Kafka cluster",
        description="Consumes backend and platform events, keeps per-segment window counts, detects "
        "tracking gaps and emits alerts. Every option can also come from its GAPWATCH_* environment "
        "variable or a TOML file (--config); flags win over the environment, which wins over the file. "
        "Secrets come only from the environment or files: GAPWATCH_SASL_PASSWORD / --sasl-password-file, "
        "GAPWATCH_API_TOKEN / --api-token-file.",
        allow_abbrev=False,  # `--sasl-password x` must not pass as `--sasl-password-file x`
    )
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streams.app import run_worker

    return run_worker(load_settings(args))
