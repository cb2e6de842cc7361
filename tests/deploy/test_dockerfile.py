"""The Dockerfile without a Docker engine: hadolint, what its stages contain, what the build context holds
(.dockerignore), and the trainer's entry script run here against a stand-in ``vigil``."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import onnxruntime

from tests.conftest import ROOT
from tests.deploy.conftest import DOCKERFILE

TRAIN_SCRIPT = ROOT / "deploy" / "docker" / "train-demo.sh"


@dataclass(frozen=True)
class Instruction:
    stage: str
    keyword: str
    arguments: str


def instructions() -> list[Instruction]:
    """The Dockerfile's instructions (continuations joined, comments dropped), each with its stage name."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out, stage = [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage = arguments.split()[-1] if " AS " in arguments.upper() else arguments
        out.append(Instruction(stage, keyword, " ".join(arguments.split())))
    return out


def stage(name: str) -> list[Instruction]:
    found = [i for i in instructions() if i.stage == name]
    assert found, f"no stage {name!r} in the Dockerfile"
    return found


def ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics: the last pattern matching the path or one of its parent folders wins."""

    def regex(pattern: str) -> re.Pattern[str]:
        parts = re.split(r"(\*\*/?|\*|\?|\[[^\]]*\])", pattern.strip("/"))
        body = "".join(
            ".*"
            if p.startswith("**")
            else "[^/]*"
            if p == "*"
            else "[^/]"
            if p == "?"
            else p
            if p.startswith("[")
            else re.escape(p)
            for p in parts
        )
        return re.compile(body + "$")

    prefixes = ["/".join(path.split("/")[: i + 1]) for i in range(path.count("/") + 1)]
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        matcher = regex(pattern.lstrip("!"))
        if any(matcher.match(prefix) for prefix in prefixes):
            verdict = not negated
    return verdict


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerfile_passes_hadolint(hadolint_binary: Path) -> None:
    result = subprocess.run(
        [str(hadolint_binary), str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dockerfile_copies_only_what_the_build_context_holds() -> None:
    patterns = dockerignore_patterns()
    sources = []
    for instruction in instructions():
        if instruction.keyword == "COPY" and "--from=" not in instruction.arguments:
            words = [w for w in instruction.arguments.split() if not w.startswith("--")]
            sources.extend(words[:-1])
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    for secret_or_bulky in (".env", ".git/HEAD", ".venv/bin/python", "artifacts/models", "tests/conftest.py"):
        assert ignored(secret_or_bulky, patterns), f"{secret_or_bulky} would reach the build context"
    assert ignored("service/__pycache__/app.cpython-311.pyc", patterns)


def test_dockerfile_serving_stage_is_slim_unprivileged_and_health_checked() -> None:
    assert instructions()[-1].stage == "serve", "serve must be the last stage: the default build target"
    build = " ".join(i.arguments for i in stage("serve-build") if i.keyword == "RUN")
    assert re.search(r"pip install \. ", build), "the serving venv installs the project without extras"
    assert '"onnxruntime-gpu[cuda,cudnn]==${ORT_VERSION}"' in build
    serve = stage("serve")
    text = " ".join(f"{i.keyword} {i.arguments}" for i in serve + stage("serve-build"))
    assert "torch" not in text
    (user,) = [i.arguments for i in serve if i.keyword == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    env = " ".join(i.arguments for i in serve if i.keyword == "ENV")
    for setting in ("VIGIL_HOST=0.0.0.0", "VIGIL_MODELS_DIR=/models", "VIGIL_PROVIDER=auto"):
        assert setting in env
    assert [i.arguments for i in serve if i.keyword == "VOLUME"] == ['["/models"]']
    (healthcheck,) = [i.arguments for i in serve if i.keyword == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "curl" not in healthcheck
    trainer = " ".join(f"{i.keyword} {i.arguments}" for i in stage("trainer"))
    assert (
        "--index-url https://download.pytorch.org/whl/cpu" in trainer and "torch==${TORCH_VERSION}" in trainer
    )
    assert '"./[train]"' in trainer and "USER 10001" in trainer


def test_dockerfile_cuda_library_path_matches_the_pinned_onnxruntime() -> None:
    """onnxruntime-gpu 1.31 is built for CUDA 13, whose pip wheels share one nvidia/cu13/lib folder: the
    library path of the image must follow the pinned version's CUDA major."""
    text = DOCKERFILE.read_text()
    pinned = re.search(r"ARG ORT_VERSION=(\S+)", text)
    assert pinned is not None
    assert pinned.group(1) == onnxruntime.__version__, (
        f"the Dockerfile pins onnxruntime-gpu {pinned.group(1)} but the venv runs {onnxruntime.__version__}: "
        "align them, then check the CUDA library folders below"
    )
    from onnxruntime.capi import build_and_package_info

    major = build_and_package_info.cuda_version.split(".")[0]
    (library_path,) = re.findall(r"LD_LIBRARY_PATH=(\S+)", text)
    folders = library_path.split(":")
    assert any(folder.endswith(f"site-packages/nvidia/cu{major}/lib") for folder in folders), folders
    assert any(folder.endswith("site-packages/nvidia/cudnn/lib") for folder in folders), folders


def run_train_script(models_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    stand_in = tmp_path / "bin" / "vigil"
    stand_in.parent.mkdir(exist_ok=True)
    stand_in.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/vigil-args\n')
    stand_in.chmod(0o755)
    env = {
        "PATH": f"{stand_in.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "VIGIL_MODELS_DIR": str(models_dir),
        "VIGIL_DEMO_TRAIN_DATA": "/opt/vigil/data/train.txt.gz",
    }
    return subprocess.run(
        ["sh", str(TRAIN_SCRIPT), "--epochs", "2"], capture_output=True, text=True, env=env, timeout=30
    )


def test_trainer_entry_script_trains_into_an_empty_models_volume(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "tvnet" / "20260101T000000Z").mkdir(parents=True)  # an interrupted run: no manifest yet
    result = run_train_script(models, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "vigil-args").read_text().split("\n")[:-1] == [
        "train",
        "--model",
        "tvnet",
        "--train",
        "/opt/vigil/data/train.txt.gz",
        "--out",
        str(models),
        "--quiet",
        "--epochs",
        "2",
    ]


def test_trainer_entry_script_keeps_an_existing_bundle(tmp_path: Path) -> None:
    models = tmp_path / "models"
    bundle = models / "tvnet" / "20260101T000000Z"
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    result = run_train_script(models, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "nothing to train" in result.stdout
    assert not (tmp_path / "vigil-args").exists()


def test_the_serving_image_is_built_without_the_training_package() -> None:
    """The serve stage's virtualenv comes from a stage that never copied training/ (and installs no extras)."""
    stages: dict[str, list[str]] = {}
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] == ["FROM"]:
            current = words[-1]
            parent = words[1]
            stages[current] = list(stages.get(parent, []))
        elif words[:1] == ["COPY"] and current:
            stages[current].extend(words[1:-1])
    assert "training" not in stages["serve-build"] and "models" in stages["serve-build"]
    assert "training" in stages["trainer"]
