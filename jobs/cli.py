"""The `python -m jobs` entry point: parse, load settings, run one command, print its summary.

Every command ends with one flat JSON summary line on stdout (`export`: on stderr, its stdout
is the data); its logs are JSON lines on stderr. Exit codes: 0 done, 1 failed, 2 bad usage or
config.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from jobs import cleanup, launch, migrate, transfer
from jobs.runtime import Command, JobFailed, Summary, UsageError
from service.errors import StoreUnavailable
from service.observability.logging import configure_logging
from service.settings import ConfigError, env_name, load_settings
from service.store.base import LayoutMismatch, ShardCountMismatch

log = logging.getLogger("tasks.jobs")

# The registry: a new command is one more entry; a command that needs no store (`launch`, which
# creates a Job from the CronJob through the Kubernetes API) simply never opens one.
COMMANDS: tuple[Command, ...] = (
    cleanup.COMMAND,
    migrate.COMMAND,
    transfer.EXPORT,
    transfer.IMPORT,
    launch.COMMAND,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobs",
        description="Admin processes of tasks: same image, same settings (TASKS_*), same store.",
        epilog="Exit codes: 0 done, 1 failed, 2 bad usage or config.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = commands.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # bad usage exits 2 here
    command = next(c for c in COMMANDS if c.name == args.command)
    started = time.monotonic()
    summary: Summary = {"job": command.name}
    code = 0
    overrides = command.overrides(args)
    try:
        summary.update(_run(command, args, overrides))
    except ConfigError as exc:
        # A bad flag is named as the flag, a bad env var as the variable.
        flags = {env_name(f): command.flag_of[f] for f in overrides if f in command.flag_of}
        name = flags.get(exc.variable, exc.variable)
        code, summary["error"] = 2, f"config error: {name}: {exc.reason}"
    except UsageError as exc:
        code, summary["error"] = 2, str(exc)
    except JobFailed as exc:
        code, summary["error"] = 1, str(exc)
        summary.update(exc.counts)
    except StoreUnavailable as exc:
        code, summary["error"] = 1, f"store unavailable ({exc})"
    except (LayoutMismatch, ShardCountMismatch) as exc:
        code, summary["error"] = 1, str(exc)
    except Exception as exc:  # the summary line is still written, and the exit code tells
        log.exception("job failed")
        code, summary["error"] = 1, f"unexpected {type(exc).__name__}: {exc}"
    summary["duration_ms"] = round((time.monotonic() - started) * 1000)
    if code:
        print(summary["error"], file=sys.stderr)
    out = sys.stderr if command.summary_to_stderr else sys.stdout
    print(json.dumps(summary, default=str), file=out, flush=True)
    return code


def _run(command: Command, args: argparse.Namespace, overrides: dict[str, Any]) -> Summary:
    settings = load_settings(**overrides)
    configure_logging(settings.log_level, stream=sys.stderr)
    return asyncio.run(command.run(args, settings))
