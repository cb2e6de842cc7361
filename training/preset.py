"""Query presets: a YAML file of Prometheus queries (one per sensor), the label that names a stream, a step and a
gap rule, read into a :class:`models.source.PrometheusSource`.

```yaml
name: node-exporter
by: instance
step: 60s
max_fill_steps: 5
queries:
  - name: cpu_user
    expr: avg by (instance) (rate(node_cpu_seconds_total{mode="user"}[2m]))
```

``--preset NAME`` looks for ``NAME.yaml`` in ``$VIGIL_PRESETS_DIR``, then in the repository's ``deploy/presets``;
``--preset PATH`` reads that file. A preset that cannot be used raises :class:`PresetError` naming the file and,
where it is about one query, the query.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from models.source import GapRule, PrometheusSource, SourceError, SourceQuery, parse_duration

PRESETS_DIR = Path(__file__).resolve().parents[1] / "deploy" / "presets"
PRESET_KEYS = {"name", "description", "by", "step", "max_fill_steps", "queries"}


class PresetError(SourceError):
    """A preset file that cannot be used."""


def preset_path(name_or_path: str) -> Path:
    """The file of a preset given by name (``node-exporter``) or path."""
    given = Path(name_or_path)
    if given.suffix in (".yaml", ".yml") or given.is_file():
        if not given.is_file():
            raise PresetError(f"preset {name_or_path}: no such file")
        return given
    searched = [Path(d) for d in os.environ.get("VIGIL_PRESETS_DIR", "").split(os.pathsep) if d]
    searched.append(PRESETS_DIR)
    for directory in searched:
        candidate = directory / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    raise PresetError(
        f"no preset {name_or_path!r} in {', '.join(str(d) for d in searched)}; give a path to a .yaml file"
    )


def load_preset(name_or_path: str) -> PrometheusSource:
    """Read and check a preset; raises :class:`PresetError`."""
    path = preset_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PresetError(f"preset {path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise PresetError(f"preset {path}: expected a mapping with {sorted(PRESET_KEYS)}")
    unknown = sorted(set(raw) - PRESET_KEYS)
    if unknown:
        raise PresetError(f"preset {path}: unknown keys {unknown}; known: {sorted(PRESET_KEYS)}")
    items = raw.get("queries")
    if not isinstance(items, list) or not items:
        raise PresetError(f"preset {path}: 'queries' must be a list of {{name, expr}}")
    queries = [_query(path, index, item) for index, item in enumerate(items)]
    try:
        step_s = parse_duration(str(raw.get("step", "60s")))
        return PrometheusSource(
            queries=queries,
            by=raw.get("by", "instance"),
            step_s=step_s,
            gap=GapRule(max_fill_steps=raw.get("max_fill_steps", GapRule().max_fill_steps)),
            preset=str(raw.get("name") or path.stem),
        )
    except (ValidationError, SourceError) as exc:
        raise PresetError(f"preset {path}: {_first_error(exc)}") from exc


def _query(path: Path, index: int, item: Any) -> SourceQuery:
    name = item.get("name") if isinstance(item, dict) else None
    label = f"query {name!r}" if isinstance(name, str) else f"query #{index + 1}"
    if not isinstance(item, dict) or set(item) != {"name", "expr"}:
        raise PresetError(f"preset {path}: {label} must have exactly the keys name and expr, got {item!r}")
    if not isinstance(item["expr"], str):
        raise PresetError(f"preset {path}: {label}: expr must be a string of PromQL")
    try:
        return SourceQuery(name=str(item["name"]), expr=" ".join(item["expr"].split()))
    except ValidationError as exc:
        raise PresetError(f"preset {path}: {label}: {_first_error(exc)}") from exc


def _first_error(exc: ValidationError | SourceError) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {first['msg']}" if where else str(first["msg"])
    return str(exc)
