"""A PNG of the interactive curves: each protocol's own figures per step (autoPET IV: DSC,
FPV and FNV; autoPET V: Dice and DMM), one chart per protocol and metric, drawn with Pillow
only (as the project's other pictures)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from petseg.io.images import atomic_path

CHART_PX: tuple[int, int] = (300, 180)
"""Width and height of one chart's plotting area."""
MARGIN_PX: tuple[int, int, int, int] = (48, 24, 12, 28)
"""Left, top, right and bottom margins of a chart (axis labels, title)."""
SERIES_RGB: tuple[tuple[int, int, int], ...] = ((20, 40, 120), (200, 60, 0), (0, 130, 60),
                                                (130, 0, 130))
AXIS_RGB: tuple[int, int, int] = (90, 90, 90)
TITLES: Mapping[str, str] = {"dsc": "DSC", "fpv_ml": "FPV ml", "fnv_ml": "FNV ml",
                             "dmm": "DMM (lesion F1)", "autopet_iv": "autoPET IV clicks",
                             "autopet_v": "autoPET V scribbles",
                             "autopet_v_petseg": "V, no empty-error quirk"}

Summary = Sequence[Mapping[str, float | int | str]]


def _points(summary: Summary, protocol: str, metric: str) -> list[tuple[float, float]]:
    return [(float(r["step"]), float(r[metric])) for r in summary
            if r["protocol"] == protocol and r["step"] != "auc" and math.isfinite(float(r[metric]))]


def _chart(draw: ImageDraw.ImageDraw, origin: tuple[int, int], series: Mapping[str, Summary],
           protocol: str, metric: str, font: ImageFont.ImageFont) -> None:
    """One chart with its top-left corner at `origin`: axes, min/max labels, a polyline per
    series."""
    left, top, _, _ = MARGIN_PX
    x0, y0 = origin[0] + left, origin[1] + top
    width, height = CHART_PX
    lines = {name: _points(summary, protocol, metric) for name, summary in series.items()}
    xs = [x for pts in lines.values() for x, _ in pts] or [0.0, 1.0]
    ys = [y for pts in lines.values() for _, y in pts] or [0.0, 1.0]
    x_lo, x_hi = min(xs), max(max(xs), min(xs) + 1.0)
    y_lo = 0.0
    y_hi = 1.0 if metric in ("dsc", "dmm") else max(max(ys) * 1.1, 1e-3)
    draw.rectangle([x0, y0, x0 + width, y0 + height], outline=AXIS_RGB)
    draw.text((x0, origin[1] + 4), f"{TITLES[protocol]}: {TITLES[metric]}", fill=AXIS_RGB,
              font=font)
    draw.text((origin[0] + 2, y0 - 4), f"{y_hi:.3g}", fill=AXIS_RGB, font=font)
    draw.text((origin[0] + 2, y0 + height - 8), f"{y_lo:.3g}", fill=AXIS_RGB, font=font)
    draw.text((x0, y0 + height + 4), f"step {x_lo:.0f}", fill=AXIS_RGB, font=font)
    draw.text((x0 + width - 36, y0 + height + 4), f"{x_hi:.0f}", fill=AXIS_RGB, font=font)

    def pixel(x: float, y: float) -> tuple[float, float]:
        return (x0 + (x - x_lo) / (x_hi - x_lo) * width,
                y0 + height - (min(y, y_hi) - y_lo) / (y_hi - y_lo) * height)

    for index, pts in enumerate(lines.values()):
        colour = SERIES_RGB[index % len(SERIES_RGB)]
        drawn = [pixel(x, y) for x, y in pts]
        if len(drawn) > 1:
            draw.line(drawn, fill=colour, width=2)
        for px, py in drawn:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)


def curves_png(series: Mapping[str, Summary], path: str | Path, protocols: Sequence[str],
               metrics: Mapping[str, Sequence[str]]) -> Path:
    """Write the curves of `series` (name -> `petseg.evaluation.interactive.summarise` rows)
    as a PNG: a column per protocol, a row per metric of that protocol (`metrics`: protocol
    -> metric names, e.g. `petseg.evaluation.interactive.PROTOCOL_METRICS`), a legend line
    at the bottom."""
    font = ImageFont.load_default()
    left, top, right, bottom = MARGIN_PX
    cell = (CHART_PX[0] + left + right, CHART_PX[1] + top + bottom)
    legend_px = 16 * max(1, len(series))
    rows = max(len(metrics[p]) for p in protocols)
    picture = Image.new("RGB", (cell[0] * len(protocols), cell[1] * rows + legend_px), "white")
    draw = ImageDraw.Draw(picture)
    for column, protocol in enumerate(protocols):
        for row, metric in enumerate(metrics[protocol]):
            _chart(draw, (column * cell[0], row * cell[1]), series, protocol, metric, font)
    for index, name in enumerate(series):
        y = cell[1] * rows + 16 * index + 2
        colour = SERIES_RGB[index % len(SERIES_RGB)]
        draw.line([(left, y + 6), (left + 24, y + 6)], fill=colour, width=2)
        draw.text((left + 30, y), name, fill=colour, font=font)
    path = Path(path)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return path
