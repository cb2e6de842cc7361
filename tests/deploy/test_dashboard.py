"""The Grafana dashboard JSON, structurally: ids, grid, datasource uid, every exported metric on a panel.
(tests/deploy/test_live_metrics.py runs its queries against a live Prometheus.)"""

from __future__ import annotations

import importlib.util
import itertools
import re
from pathlib import Path

from service.metrics import Metrics
from tests.conftest import ROOT
from tests.deploy.conftest import (
    DASHBOARD,
    dashboard_panels,
    dashboard_queries,
    load_dashboard,
    provisioned_datasource_uid,
    rules,
)

GRID_COLUMNS = 24


def test_dashboard_panel_ids_are_unique() -> None:
    ids = [panel["id"] for panel in dashboard_panels(load_dashboard())]
    assert len(ids) == len(set(ids)), sorted(ids)


def test_dashboard_panels_fit_the_grid_without_overlapping() -> None:
    panels = dashboard_panels(load_dashboard())
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0, panel["title"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        for cell in itertools.product(
            range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])
        ):
            assert cell not in cells, f"{panel['title']!r} overlaps {cells[cell]!r} at {cell}"
            cells[cell] = panel["title"]


def test_dashboard_panels_use_the_provisioned_datasource_uid() -> None:
    uid = provisioned_datasource_uid()
    text = DASHBOARD.read_text()
    assert "${DS_" not in text and "__inputs" not in text, (
        "exported inputs do not load under file provisioning"
    )
    dashboard = load_dashboard()
    panels = [panel for panel in dashboard_panels(dashboard) if panel["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], f"{panel['title']}: a panel without a query shows nothing"
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
            assert target["expr"].strip(), panel["title"]
    for variable in dashboard.get("templating", {}).get("list", []):
        assert variable.get("datasource", {}).get("uid", uid) == uid, variable["name"]


def test_dashboard_shows_every_metric_the_service_exports() -> None:
    """A metric added to service/metrics.py needs a panel (directly or through a recording rule)."""
    recorded = {rule["record"]: rule["expr"] for rule in rules("record")}
    texts = [expr for _, expr in dashboard_queries()]
    for name in re.findall(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", " ".join(texts)):
        assert name in recorded, f"the dashboard uses {name}, which no recording rule defines"
        texts.append(recorded[name])
    # Recording rules that feed other recording rules (bucket rates feed quantiles).
    for _ in range(2):
        texts += [
            recorded[n]
            for n in re.findall(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", " ".join(texts))
            if n in recorded
        ]
    shown = " ".join(texts)
    exported = {family.name for family in Metrics().registry.collect()}
    missing = sorted(
        name for name in exported if not re.search(rf"\b{name}(_total|_bucket|_sum|_count)?\b", shown)
    )
    assert not missing, f"metrics without a panel: {missing}"


def test_render_dashboard_draws_the_layout_png(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("render_dashboard", ROOT / "deploy" / "render_dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "layout.png"
    assert module.main(["--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
