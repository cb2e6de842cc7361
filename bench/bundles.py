"""Model bundles for the benchmarks: one per family at its default size, trained once and cached.

Training quality is irrelevant for speed, so a bundle is trained for one epoch on the first 4,000 rows of the
bundled SMD sample (``vigil train --epochs 1 --max-rows 4000``). The cache key is a hash of the code that
decides the graph (the family's module, shared layers, export), so an edited architecture is retrained.
The trained PyTorch weights are kept beside the bundle for the benchmarks that run the model in PyTorch
(the naive peer server), so that every peer serves the same model.

Layout under ``artifacts/bench/`` (git-ignored)::

    bundles/<name>/<version>/{model.onnx, manifest.json}   one per family, plus derived stride variants
    weights/<family>-<version>.pt                           state_dict after ``prepare_for_export``
    serve/<tag>/<name>/<version> -> bundles/<name>/<version>  a models dir holding only what one run serves
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from models.manifest import MANIFEST_FILE, Manifest

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "artifacts" / "bench"
BUNDLES_DIR = BENCH_DIR / "bundles"
WEIGHTS_DIR = BENCH_DIR / "weights"
SERVE_DIR = BENCH_DIR / "serve"
SAMPLE = ROOT / "data" / "smd-machine-1-2"
FAMILIES = ("tvnet", "convtimenet", "dense_ae", "lstm_ae", "pca")
TRAIN_ROWS = 4000
WINDOW_LENGTH = 100
DEFAULT_STRIDE = 10


def code_version(family: str) -> str:
    """``bench-<hash>`` of the sources that decide the exported graph of ``family``."""
    digest = hashlib.sha256()
    for relative in (f"models/{family}.py", "models/layers.py", "models/registry.py", "training/export.py"):
        path = ROOT / relative
        if path.is_file():
            digest.update(path.read_bytes())
    return "bench-" + digest.hexdigest()[:10]


def weights_path(family: str) -> Path:
    return WEIGHTS_DIR / f"{family}-{code_version(family)}.pt"


def family_bundle(family: str) -> Path:
    """The cached bundle of ``family`` at default size and stride 10; trained on first use (~10-60 s)."""
    version = code_version(family)
    bundle_dir = BUNDLES_DIR / family / version
    if (bundle_dir / MANIFEST_FILE).is_file() and weights_path(family).is_file():
        return bundle_dir
    _train(family, version)
    return bundle_dir


def _train(family: str, version: str) -> None:
    import torch

    import training.pipeline as pipeline
    from training.config import CalibrationConfig, TrainConfig

    built: dict[str, Any] = {}
    original = pipeline.build_model  # type: ignore[attr-defined]

    def build_and_keep(*args: Any, **kwargs: Any) -> Any:
        model = original(*args, **kwargs)
        built.setdefault("model", model)  # the shipped model is the first built (any fold models come after)
        return model

    print(f"[bundles] training {family} (1 epoch, {TRAIN_ROWS} rows) into {BUNDLES_DIR}", flush=True)
    pipeline.build_model = build_and_keep  # type: ignore[attr-defined]  # keep a handle on the trained module to save its weights
    try:
        shutil.rmtree(BUNDLES_DIR / family / version, ignore_errors=True)
        pipeline.train_bundle(
            TrainConfig(
                model=family,
                train_path=SAMPLE / "train.txt.gz",
                out_dir=BUNDLES_DIR,
                version=version,
                window_length=WINDOW_LENGTH,
                stride=DEFAULT_STRIDE,
                epochs=1,
                max_rows=TRAIN_ROWS,
                progress=False,
                # throughput bundles: the graph is what is measured, not its thresholds (no fold models)
                calibration=CalibrationConfig(cross_fit_folds=0),
            )
        )
    finally:
        pipeline.build_model = original  # type: ignore[attr-defined]
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    torch.save(built["model"].module.state_dict(), weights_path(family))


def derived_bundle(base: Path, stride: int) -> Path:
    """The same graph served at another stride: a copy of ``base`` named ``<name>-s<stride>``.

    Only the manifest's name and stride change (thresholds stay those calibrated at the base stride; that
    does not matter for speed), so "same model" holds byte for byte."""
    manifest = Manifest.load(base)
    if stride == manifest.stride:
        return base
    name = f"{manifest.name}-s{stride}"
    target = BUNDLES_DIR / name / manifest.version
    if not (target / MANIFEST_FILE).is_file():
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(base / manifest.onnx.file, target / manifest.onnx.file)
        manifest.model_copy(update={"name": name, "stride": stride}).save(target)
    return target


def serve_dir(bundles: list[Path]) -> Path:
    """A models directory that holds exactly ``bundles`` (symlinks), so a server loads nothing else."""
    tag = hashlib.sha256("\n".join(sorted(str(b) for b in bundles)).encode()).hexdigest()[:10]
    directory = SERVE_DIR / tag
    shutil.rmtree(directory, ignore_errors=True)
    for bundle in bundles:
        name = Manifest.load(bundle).name
        (directory / name).mkdir(parents=True, exist_ok=True)
        (directory / name / bundle.name).symlink_to(bundle.resolve(), target_is_directory=True)
    return directory


def model_name(bundle: Path) -> str:
    return Manifest.load(bundle).name


def trained_module(bundle: Path) -> Any:
    """The PyTorch module behind ``bundle`` (eval mode, export-time structure) with its trained weights.

    Derived bundles share their base family's weights. Buffers whose shape the fit decides (PCA's
    components) are resized before loading, so loading is strict."""
    import torch

    from models.registry import build_model

    manifest = Manifest.load(bundle)
    family = manifest.architecture
    overrides = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in manifest.hyperparameters.items()
        if k not in ("window_length", "n_features")
    }
    module = build_model(family, manifest.window_length, manifest.n_features, **overrides).module.eval()
    prepare = getattr(module, "prepare_for_export", None)
    if callable(prepare):
        prepare()
    state = torch.load(weights_path(family), map_location="cpu", weights_only=True)
    for name, _ in list(module.named_buffers()):
        if name in state and module.get_buffer(name).shape != state[name].shape:
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            owner.register_buffer(leaf, torch.empty_like(state[name]))
    module.load_state_dict(state, strict=True)
    return module
