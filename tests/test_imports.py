"""The serving path must never import torch."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_service_and_the_cli_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import service.app, service.server, service.replay, training.cli, training.evaluate\n"
        "import training.recalibrate\n"
        "from training.cli import build_parser\n"
        "build_parser()\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
