"""The twelve-factor gate (`make factors`) and the marker check it relies on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.factors import FACTORS, main
from tests.support import ROOT, base_env

pytestmark = pytest.mark.harness


def write_report(path: Path, cases: list[tuple[str, list[str], str]], commit: str = "") -> None:
    """cases: (name, factors, outcome) with outcome passed, failed or skipped."""
    body = []
    for name, factors, outcome in cases:
        props = "".join(f'<property name="factor" value="{f}"/>' for f in factors)
        child = {"passed": "", "failed": '<failure message="x"/>', "skipped": "<skipped/>"}[outcome]
        body.append(
            f'<testcase classname="tests.test_x" name="{name}">'
            f"<properties>{props}</properties>{child}</testcase>"
        )
    suite_props = f'<properties><property name="commit" value="{commit}"/></properties>'
    path.write_text(
        f'<testsuites><testsuite name="pytest">{suite_props if commit else ""}'
        + "".join(body)
        + "</testsuite></testsuites>"
    )


def every_factor(outcome: str = "passed") -> list[tuple[str, list[str], str]]:
    return [(f"test_{f}", [f], outcome) for f in FACTORS]


def test_the_gate_passes_when_every_factor_has_a_passing_test(tmp_path, capsys) -> None:
    write_report(tmp_path / "test.xml", every_factor()[:6])
    write_report(tmp_path / "e2e.xml", every_factor()[6:])
    write_report(tmp_path / "e2e-node.xml", [("test_n", ["IX"], "passed")])

    assert main(["--reports", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    for factor, (name, _) in FACTORS.items():
        assert f"{factor} {name}" in table


def test_the_gate_fails_naming_a_factor_only_skipped_or_harness_tests_claim(
    tmp_path, capsys
) -> None:
    cases = [c for c in every_factor() if c[1] != ["XI"]] + [("test_xi", ["XI"], "skipped")]
    write_report(tmp_path / "test.xml", cases)
    for run in ("e2e", "e2e-node"):
        write_report(tmp_path / f"{run}.xml", [("test_h", [], "passed")])

    assert main(["--reports", str(tmp_path)]) == 1
    assert "factor XI (Logs): no passing test proves it" in capsys.readouterr().err


def test_the_gate_fails_on_a_missing_report_and_on_a_failed_test(tmp_path, capsys) -> None:
    write_report(tmp_path / "test.xml", every_factor())
    write_report(tmp_path / "e2e.xml", [("test_broken", ["IV"], "failed")])

    assert main(["--reports", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no report of make e2e-node" in err
    assert "make e2e: 1 test(s) failed: tests.test_x::test_broken" in err


def test_the_gate_refuses_a_report_of_another_commit(tmp_path, capsys) -> None:
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    write_report(tmp_path / "test.xml", every_factor(), commit=head)
    write_report(tmp_path / "e2e.xml", every_factor(), commit="0" * 40)
    write_report(tmp_path / "e2e-node.xml", every_factor(), commit=head)

    assert main(["--reports", str(tmp_path)]) == 1
    assert "report of make e2e is of commit 000000000000" in capsys.readouterr().err


def test_a_test_without_a_factor_or_harness_marker_stops_the_collection(tmp_path) -> None:
    (tmp_path / "test_unmarked.py").write_text("def test_nothing():\n    pass\n")
    (tmp_path / "test_marked.py").write_text(
        "import pytest\n\n@pytest.mark.factor('III')\ndef test_config():\n    pass\n"
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "tests.conftest",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=base_env(PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout + run.stderr
    assert "test_unmarked.py::test_nothing" in run.stderr
    assert "test_marked.py" not in run.stderr
