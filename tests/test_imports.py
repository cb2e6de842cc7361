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


def test_packages_depend_only_downward_and_serving_never_imports_training() -> None:
    """models/ imports neither service/ nor training/; training/ never imports service/; `vigil serve`'s
    parser, the app and the server import nothing of training/ (the serving image leaves it out)."""
    import ast

    root = Path(__file__).resolve().parents[1]

    def imported(package: str) -> set[str]:
        names = set()
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    names.add(node.module.split(".")[0])
                elif isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
        return names

    assert not imported("models") & {"service", "training"}
    assert "service" not in imported("training")
    assert "training" not in imported("service")
    code = (
        "import sys\n"
        "import service.app, service.server, service.cli\n"
        "parser, commands = service.cli.build_parser(with_plugins=False)\n"
        "parser.parse_args(['serve', '--port', '1'])\n"
        "assert not [m for m in sys.modules if m == 'training' or m.startswith(('training.', 'torch'))]\n"
        "print(sorted(commands))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['replay', 'serve']"


def test_the_vigil_command_finds_the_training_commands_it_does_not_own() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for command in ("serve", "replay", "train", "evaluate", "calibrate", "backtest"):
        assert command in result.stdout


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
