"""The serving path must never import torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


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


def test_provider_auto_probes_cuda_quietly_and_says_which_provider_in_one_line(bundle_dir: Path) -> None:
    """On a machine without the CUDA libraries, ONNX Runtime's own attempt prints a red error at every start;
    the probe loads the provider library itself and logs one plain line instead."""
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(name)s: %(message)s')\n"
        "from pathlib import Path\n"
        "from models.runtime import cuda_unavailable_reason, open_session\n"
        f"paths = [Path({str(bundle_dir / 'model.onnx')!r})] * 2\n"
        "sessions = [open_session(p, 'auto') for p in paths]\n"
        "print('providers', sessions[0].get_providers()[0], 'reason', cuda_unavailable_reason())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "onnxruntime" not in result.stderr.lower(), result.stderr  # nothing from ORT's own logger
    if "reason None" in result.stdout:
        assert "providers CUDAExecutionProvider" in result.stdout
    else:
        assert "providers CPUExecutionProvider" in result.stdout
        assert result.stdout.count("ONNX Runtime provider: CPU (CUDA cannot run here:") == 1, result.stdout
