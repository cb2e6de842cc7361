"""Draw the layout of a Grafana dashboard JSON as a PNG (for the README): one box per panel at its gridPos,
with its title, type and queries; rows as bars.

    .venv/bin/python deploy/render_dashboard.py [--dashboard deploy/grafana/dashboards/vigil.json]
                                                [--out deploy/grafana/dashboard-layout.png]
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "vigil.json"
OUTPUT = ROOT / "deploy" / "grafana" / "dashboard-layout.png"

GRID_COLUMNS = 24
COLUMN_IN = 0.62  # inches per grid column
ROW_IN = 0.36  # inches per grid row (Grafana: 30 px rows, ~50 px columns on a wide screen)
COLOURS = {
    "timeseries": "#dbeafe",
    "stat": "#dcfce7",
    "table": "#fef9c3",
    "heatmap": "#ffedd5",
}
OTHER_COLOUR = "#f3f4f6"


def flatten_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Top-level panels plus those nested in collapsed rows."""
    out: list[dict[str, Any]] = []
    for panel in panels:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def query_lines(panel: dict[str, Any], width: int) -> list[str]:
    """Every target's expression, wrapped to ``width`` characters."""
    lines: list[str] = []
    for target in panel.get("targets") or []:
        lines.extend(textwrap.wrap(str(target.get("expr", "")), width))
    return lines


def render(dashboard: dict[str, Any], out: Path) -> None:
    panels = flatten_panels(dashboard.get("panels", []))
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig, ax = plt.subplots(figsize=(GRID_COLUMNS * COLUMN_IN, height * ROW_IN + 0.8))
    ax.set_xlim(0, GRID_COLUMNS)
    ax.set_ylim(height, 0)  # Grafana's y grows downwards
    ax.axis("off")
    ax.set_title(f"{dashboard.get('title', 'dashboard')}: panel layout", fontsize=16, loc="left", pad=12)
    for panel in panels:
        grid = panel["gridPos"]
        x, y, w, h = grid["x"], grid["y"], grid["w"], grid["h"]
        if panel.get("type") == "row":
            ax.add_patch(FancyBboxPatch((x, y + 0.15), w, h - 0.3, boxstyle="square,pad=0", color="#374151"))
            ax.text(
                x + 0.2,
                y + h / 2,
                panel.get("title", ""),
                color="white",
                va="center",
                fontsize=11,
                weight="bold",
            )
            continue
        colour = COLOURS.get(panel.get("type", ""), OTHER_COLOUR)
        box = FancyBboxPatch(
            (x + 0.08, y + 0.08),
            w - 0.16,
            h - 0.16,
            boxstyle="round,pad=0,rounding_size=0.15",
            facecolor=colour,
            edgecolor="#6b7280",
            linewidth=1,
        )
        ax.add_patch(box)
        title = textwrap.shorten(panel.get("title", ""), max(int(w * 4), 8), placeholder="…")
        ax.text(x + 0.3, y + 0.45, title, va="top", fontsize=10, weight="bold")
        ax.text(
            x + 0.3, y + 1.35, panel.get("type", "?"), va="top", fontsize=8, color="#4b5563", style="italic"
        )
        query = "\n".join(query_lines(panel, max(int(w * 6.5), 10))[: max(2 * h - 5, 1)])
        ax.text(x + 0.3, y + 2.2, query, va="top", fontsize=7, family="monospace", color="#1f2937")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render a Grafana dashboard's panel layout to a PNG")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    parser.add_argument("--out", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    render(json.loads(args.dashboard.read_text()), args.out)
    sys.stdout.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
