"""The house style holds on every commit: ruff's lint and format, and mypy over the code that ships and the
benchmarks (pyproject.toml configures both). A change that breaks either fails the suite, not a later review."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_ruff_finds_nothing_to_lint_or_reformat() -> None:
    lint = run(str(BIN / "ruff"), "check", ".")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    style = run(str(BIN / "ruff"), "format", "--check", ".")
    assert style.returncode == 0, style.stdout + style.stderr


def test_mypy_finds_no_type_error() -> None:
    checked = run(str(BIN / "mypy"), "--explicit-package-bases", "service", "models", "training", "bench")
    assert checked.returncode == 0, checked.stdout + checked.stderr
