"""The twelve-factor scorecard: the factors, and the gate over the runs' JUnit reports.

`make test`, `make e2e` and `make e2e-node` each write a JUnit report to `.cache/reports/`; every
test case in it carries its factors as `factor` properties (or a `harness` property: a test of the
test machinery, which proves no factor). `python -m tests.factors` (`make factors`) reads the
three, prints one table, and exits 1 when a report is missing, empty or from another commit, when
a test failed, or when a factor has no passing test. Standard library only: it runs without the
venv.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT_DIR = ROOT / ".cache" / "reports"
# The make targets whose reports the gate needs, in ladder order.
RUNS = ("test", "e2e", "e2e-node")

# Factor -> (name, what a passing test of it shows).
FACTORS: dict[str, tuple[str, str]] = {
    "I": ("Codebase", "one repo, one version for package, image and chart"),
    "II": ("Dependencies", "hashed universal lock; the image holds exactly it"),
    "III": ("Config", "env only, one settings class; bad config exits 2"),
    "IV": ("Backing services", "store chosen by config; Redis failures are fast 503s"),
    "V": ("Build, release, run", "one image, run as API and every Job"),
    "VI": ("Processes", "stateless: processes share state only through Redis"),
    "VII": ("Port binding", "the process binds $PORT and the metrics port itself"),
    "VIII": ("Concurrency", "scale out by processes; admin runs take a lock"),
    "IX": ("Disposability", "fast start, graceful SIGTERM, rollouts fail no request"),
    "X": ("Dev/prod parity", "same suite on memory and Redis; bundles compared"),
    "XI": ("Logs", "JSON event lines on stdout, no log files"),
    "XII": ("Admin processes", "jobs from the same image and env, as Jobs"),
}

# JUnit property names written by tests/conftest.py.
FACTOR_PROPERTY = "factor"
HARNESS_PROPERTY = "harness"
COMMIT_PROPERTY = "commit"


@dataclass
class Run:
    """One run's report: per factor, the passed and failed test ids."""

    name: str
    commit: str | None = None
    cases: int = 0
    passed: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    failed: list[str] = field(default_factory=list)
    untagged: list[str] = field(default_factory=list)


def read_report(name: str, path: Path) -> Run:
    run = Run(name)
    root = ET.parse(path).getroot()  # noqa: S314 (our own runs wrote it)
    for prop in root.iter("property"):
        if prop.get("name") == COMMIT_PROPERTY and run.commit is None:
            run.commit = prop.get("value")
    for case in root.iter("testcase"):
        run.cases += 1
        test_id = f"{case.get('classname')}::{case.get('name')}"
        props = case.find("properties")
        factors = [
            p.get("value", "")
            for p in (props if props is not None else [])
            if p.get("name") == FACTOR_PROPERTY
        ]
        harness = props is not None and any(p.get("name") == HARNESS_PROPERTY for p in props)
        if case.find("failure") is not None or case.find("error") is not None:
            run.failed.append(test_id)
        elif case.find("skipped") is None:
            for factor in factors:
                run.passed[factor].append(test_id)
        if not factors and not harness:
            run.untagged.append(test_id)
    return run


def head_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def modules(test_ids: list[str]) -> list[str]:
    """`tests.chart.test_objects::test_x` -> `chart/test_objects`, most tests first."""
    counts = Counter(t.split("::")[0].removeprefix("tests.").replace(".", "/") for t in test_ids)
    return [module for module, _ in counts.most_common()]


def scorecard(runs: list[Run]) -> list[str]:
    """Print the table; return the reasons the gate fails (empty: every factor holds)."""
    problems: list[str] = []
    header = f"{'factor':<24} {'what proves it':<54} " + " ".join(f"{r.name:>8}" for r in runs)
    print(header + f" {'total':>6}  proved in")
    print("-" * (len(header) + 18))
    for factor, (name, claim) in FACTORS.items():
        per_run = [len(r.passed.get(factor, [])) for r in runs]
        total = sum(per_run)
        ids = [t for r in runs for t in r.passed.get(factor, [])]
        where = ", ".join(modules(ids)[:3]) + (" ..." if len(modules(ids)) > 3 else "")
        label = f"{factor} {name}"
        cells = " ".join(f"{n:>8}" for n in per_run)
        print(f"{label:<24} {claim:<54} {cells} {total:>6}  {where or 'MISSING'}")
        if total == 0:
            problems.append(f"factor {factor} ({name}): no passing test proves it")
    for run in runs:
        if run.failed:
            shown = ", ".join(run.failed[:5]) + (" ..." if len(run.failed) > 5 else "")
            problems.append(f"make {run.name}: {len(run.failed)} test(s) failed: {shown}")
        if run.untagged:
            problems.append(
                f"make {run.name}: tests without a factor or harness marker: "
                + ", ".join(run.untagged[:5])
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.factors", description=__doc__)
    parser.add_argument(
        "--reports", type=Path, default=REPORT_DIR, help="directory of <run>.xml (%(default)s)"
    )
    parser.add_argument(
        "--runs", nargs="+", default=list(RUNS), help="runs whose reports are required"
    )
    args = parser.parse_args(argv)

    problems: list[str] = []
    runs: list[Run] = []
    for name in args.runs:
        path = args.reports / f"{name}.xml"
        if not path.is_file():
            problems.append(f"no report of make {name} ({path}): run `make {name}` first")
            runs.append(Run(name))
            continue
        try:
            run = read_report(name, path)
        except ET.ParseError as error:
            problems.append(f"report of make {name} ({path}) is not valid XML: {error}")
            runs.append(Run(name))
            continue
        if run.cases == 0:
            problems.append(f"report of make {name} ({path}) holds no test")
        runs.append(run)

    head = head_commit()
    for run in runs:
        if head and run.commit and run.commit != head:
            problems.append(
                f"report of make {run.name} is of commit {run.commit[:12]}, the checkout is at "
                f"{head[:12]}: run `make {run.name}` again"
            )

    problems = scorecard(runs) + problems
    if problems:
        print("\ntwelve-factor gate FAILED:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"\ntwelve-factor gate passed: every factor proved by {' + '.join(args.runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
