"""Series loading, the chronological split, normalisation fitted on training data only, windowing."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.manifest import Normalisation
from models.prometheus import PrometheusClient, fetch_rows
from models.source import PrometheusSource
from models.tables import Table, TableError, parse_table, read_text

F32 = npt.NDArray[np.float32]


class DataError(ValueError):
    """A data file that cannot be used, with the reason."""


def load_table(path: Path, max_rows: int | None = None) -> Table:
    """``[T, C]`` values from a ``.npy`` array or a text table (``models.tables``: optionally ``.gz``, a header
    of sensor names, a time column), with the header's names (None without one)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    names = None
    if path.suffix == ".npy":
        array = np.load(path)
    else:
        try:
            table = parse_table(read_text(path), str(path))
        except TableError as exc:
            raise DataError(str(exc)) from exc
        array, names = table.values, table.names
    if array.ndim != 2 or array.shape[0] < 2 or array.shape[1] < 1:
        raise DataError(f"{path}: expected a [time, sensors] table, got shape {array.shape}")
    if max_rows is not None:
        array = array[:max_rows]
    if not np.isfinite(array).all():
        raise DataError(f"{path}: contains NaN or infinite values")
    return Table(np.ascontiguousarray(array, dtype=np.float32), names)


def load_series(path: Path, max_rows: int | None = None) -> F32:
    """``[T, C]`` float32 of :func:`load_table`."""
    values: F32 = load_table(path, max_rows).values
    return values


def load_labels(path: Path, n_rows: int | None = None) -> npt.NDArray[np.int8]:
    """One 0/1 label per row (``.npy`` or text, optionally ``.gz``)."""
    if path.suffix == ".npy":
        labels = np.load(path).reshape(-1)
    else:
        labels = np.loadtxt(read_text(path).splitlines(), dtype=np.float64, ndmin=1)
    if not np.isin(labels, (0, 1)).all():
        raise DataError(f"{path}: labels must be 0 or 1")
    if n_rows is not None and labels.shape[0] != n_rows:
        raise DataError(f"{path}: {labels.shape[0]} labels for {n_rows} rows")
    out: npt.NDArray[np.int8] = labels.astype(np.int8)
    return out


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Split:
    train: F32
    validation: F32


def split_chronological(series: F32, validation_fraction: float, window_length: int) -> Split:
    """The last ``validation_fraction`` of the rows is held out (never trained on)."""
    n_validation = int(round(series.shape[0] * validation_fraction))
    n_train = series.shape[0] - n_validation
    if n_validation < window_length or n_train < window_length:
        raise DataError(
            f"{series.shape[0]} rows cannot give {window_length}-step windows to both the training part and the "
            f"validation part ({validation_fraction:.0%} held out)"
        )
    return Split(train=series[:n_train], validation=series[n_train:])


def fit_normalisation(train: F32, min_scale: float) -> Normalisation:
    """Per-feature mean and std of the training part; std floored so constant sensors stay finite."""
    mean = train.astype(np.float64).mean(axis=0)
    std = train.astype(np.float64).std(axis=0)
    scale = np.maximum(std, min_scale)
    return Normalisation(mean=[float(v) for v in mean], scale=[float(v) for v in scale])


def make_windows(series: F32, window_length: int, step: int) -> F32:
    """All windows ``[N, L, C]`` of a normalised series taken every ``step`` rows (the last one included)."""
    view = np.lib.stride_tricks.sliding_window_view(series, window_length, axis=0)  # [T-L+1, C, L]
    starts = np.arange(0, view.shape[0], step)
    if starts[-1] != view.shape[0] - 1:
        starts = np.append(starts, view.shape[0] - 1)
    return np.ascontiguousarray(view[starts].transpose(0, 2, 1), dtype=np.float32)


SERIES_SUFFIXES = (".txt", ".txt.gz", ".csv", ".csv.gz", ".npy")


def training_parts(paths: list[Path]) -> list[Path]:
    """The files to train on: each path itself, or every series file directly in a directory (sorted)."""
    parts: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(SERIES_SUFFIXES))
            if not found:
                raise DataError(f"{path}: no series files ({', '.join(SERIES_SUFFIXES)}) in the directory")
            parts.extend(found)
        else:
            parts.append(path)
    if not parts:
        raise DataError("no training data given")
    return parts


def load_parts(paths: list[Path], max_rows: int | None = None) -> list[F32]:
    """Each part ``[T_i, C]``; every part must have the same sensors (columns)."""
    return load_named_parts(paths, max_rows)[0]


def load_named_parts(paths: list[Path], max_rows: int | None = None) -> tuple[list[F32], list[str] | None]:
    """Each part ``[T_i, C]`` and the sensor names of their headers (None where no part has one); every part
    must have the same sensors, and parts with headers the same names in the same order."""
    tables = [load_table(path, max_rows) for path in paths]
    widths = {t.values.shape[1] for t in tables}
    if len(widths) > 1:
        detail = ", ".join(f"{p.name}: {t.values.shape[1]}" for p, t in zip(paths, tables, strict=True))
        raise DataError(f"the training parts have different sensor counts ({detail})")
    named = [(p, t.names) for p, t in zip(paths, tables, strict=True) if t.names is not None]
    if any(names != named[0][1] for _, names in named):
        detail = "; ".join(f"{p.name}: {','.join(names or [])}" for p, names in named)
        raise DataError(f"the training parts' headers name different sensors ({detail})")
    return [t.values for t in tables], (named[0][1] if named else None)


def parts_sha256(paths: list[Path]) -> str:
    """One file's sha256, or for several the sha256 of their sha256s in order."""
    if len(paths) == 1:
        return file_sha256(paths[0])
    return hashlib.sha256("".join(file_sha256(p) for p in paths).encode()).hexdigest()


@dataclass(frozen=True)
class SourceParts:
    """Training parts read from a Prometheus: one per segment long enough to split, label values in order."""

    parts: list[F32]
    names: list[str]  # "<stream id>@<first ts>" of each part
    skipped: list[str]  # segments too short to give both a training and a validation window


def prometheus_parts(
    url: str,
    source: PrometheusSource,
    start: float,
    end: float,
    window_length: int,
    validation_fraction: float,
    timeout_s: float = 30.0,
) -> SourceParts:
    """The source's rows over ``[start, end]`` as training parts: each label value's segments (split at gaps),
    those too short for :func:`split_chronological` left out. Raises the query's error (``models.prometheus``)
    or :class:`DataError` when no part is left."""
    with PrometheusClient(url, timeout_s) as client:
        rows = fetch_rows(client, source, start, end, require_data=True)
    parts, names, skipped = [], [], []
    for stream, segments in rows.segments.items():
        for segment in segments:
            name = f"{stream}@{segment.ts[0]:.0f}"
            n_validation = int(round(len(segment) * validation_fraction))
            if n_validation < window_length or len(segment) - n_validation < window_length:
                skipped.append(f"{name} ({len(segment)} rows)")
                continue
            parts.append(np.ascontiguousarray(segment.values, dtype=np.float32))
            names.append(name)
    if not parts:
        detail = ", ".join(skipped) or "no usable rows (every row has a sensor missing beyond the gap rule)"
        raise DataError(
            f"no segment of {source.by} values between {start:.0f} and {end:.0f} is long enough for "
            f"{window_length}-step windows in both training and validation ({validation_fraction:.0%}): {detail}"
        )
    return SourceParts(parts, names, skipped)


def arrays_sha256(parts: list[F32]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(np.ascontiguousarray(part, dtype=np.float32).tobytes())
    return digest.hexdigest()
