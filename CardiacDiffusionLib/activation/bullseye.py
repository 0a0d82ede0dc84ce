"""AHA 17-segment model of a TOS map: per-segment table, bullseye PNG and the suggested LV lead segment.

Segments from cardiac coordinates (:mod:`.sectors`): height 0-1/3 basal (1-6), 1/3-2/3 mid (7-12),
2/3-0.9 apical (13-16), beyond 0.9 the apex (17); basal and mid rings in 60 degree steps from the
anterior RV insertion (anteroseptal, inferoseptal, inferior, inferolateral, anterolateral,
anterior), the apical ring in 90 degree steps centred on the mid-septum (60 degrees).

Angles are each level's own: from the anterior RV insertion of the point's height (interpolated between
slices, :meth:`.sectors.LVFrame.aha_coords`), so the 3 sectors of a basal or mid slice fill one segment.

The lead suggestion is decision support: the latest-activating free-wall segment of the basal and
mid rings (never septal, apical only on request), skipping segments marked as scar. Exact ties go to the
lower segment number (basal before mid); segments within :data:`NEAR_TIE_MS` of it are listed as near ties.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..errors import InputError

NAMES = {
    1: "basal anterior", 2: "basal anteroseptal", 3: "basal inferoseptal", 4: "basal inferior",
    5: "basal inferolateral", 6: "basal anterolateral", 7: "mid anterior", 8: "mid anteroseptal",
    9: "mid inferoseptal", 10: "mid inferior", 11: "mid inferolateral", 12: "mid anterolateral",
    13: "apical anterior", 14: "apical septal", 15: "apical inferior", 16: "apical lateral", 17: "apex",
}  # fmt: skip
SEPTAL = (2, 3, 8, 9, 14)
FREE_WALL = (1, 4, 5, 6, 7, 10, 11, 12)
APICAL_FREE_WALL = (13, 15, 16)
APEX_HEIGHT = 0.9
#: free-wall segments whose median TOS is this close to the suggested one's are named with it: the TOS of a
#: segment is not known better (onset detector ~4 ms sector error, DENSE frames 15-20 ms apart)
NEAR_TIE_MS = 5.0
DISCLAIMER = (
    "Decision support only, not a diagnosis: the suggested segment ranks late activation on this model; "
    "confirm with scar imaging, coronary venous anatomy and clinical judgement"
)
#: bullseye polar angle (deg, counter-clockwise) of angle 0 (the anterior RV insertion): AHA layout,
#: anterior at the top, septum on the left
PLOT_OFFSET_DEG = 120.0
#: TOS colour map of the bullseye and the 3D picture: lightness rises monotonically from early (dark purple) to
#: late (light yellow), readable with red-green colour blindness and in grey (turbo's ends were both dark)
TOS_CMAP = "viridis"
#: fill of a segment without myocardium points: white, unlike any colour of the map
NO_DATA_COLOUR = (1.0, 1.0, 1.0, 1.0)
#: radius (bullseye units, outer ring 1.0) of the anterior / septal / inferior / lateral labels, clear of the rings
SIDE_LABEL_RADIUS = 1.1


def segment_of(angle, height) -> np.ndarray:
    """AHA segment (1-17) of cardiac coordinates (angle rad from the level's anterior insertion, height 0 base 1 apex)."""
    deg = np.mod(np.rad2deg(np.asarray(angle, float)), 360.0)
    h = np.asarray(height, float)
    ring6 = np.array([2, 3, 4, 5, 6, 1])[np.minimum((deg // 60).astype(int), 5)]
    apical = np.array([14, 15, 16, 13])[(np.mod(deg - 15.0, 360.0) // 90).astype(int) % 4]
    return np.where(h < 1 / 3, ring6, np.where(h < 2 / 3, ring6 + 6, np.where(h < APEX_HEIGHT, apical, 17)))


def check_scar(scar) -> list[int]:
    scar = sorted({int(s) for s in (scar or [])})
    bad = [s for s in scar if s not in NAMES]
    if bad:
        raise InputError(f"--scar: segments {bad} do not exist; give AHA segment numbers 1-17")
    return scar


def segment_table(segments: np.ndarray, tos: np.ndarray, late: np.ndarray | None = None,
                  late_threshold_ms: float | None = None, scar=None) -> list[dict]:  # fmt: skip
    """One row per AHA segment: median/mean TOS, points, late fraction, scar; NaN where no point falls."""
    scar = check_scar(scar)
    rows = []
    for s, name in NAMES.items():
        inside = segments == s
        values = tos[inside]
        median = float(np.median(values)) if inside.any() else float("nan")
        nan = float("nan")
        rows.append({
            "segment": s, "name": name, "points": int(inside.sum()),
            "tos_median_ms": round(median, 2), "tos_mean_ms": round(float(values.mean()), 2) if inside.any() else nan,
            "late_fraction": round(float(late[inside].mean()), 4) if late is not None and inside.any() else nan,
            "late": bool(late_threshold_ms is not None and median >= late_threshold_ms),
            "septal": s in SEPTAL, "scar": s in scar,
        })  # fmt: skip
    return rows


def near_ties_text(lead: dict | None) -> str:
    """``within 5 ms: segment(s) 6, 12`` for a suggestion with near ties, else empty."""
    ties = (lead or {}).get("near_ties")
    return f"within {lead['near_tie_ms']:g} ms: segment(s) {', '.join(map(str, ties))}" if ties else ""


def suggest_lead(table: list[dict], include_apical: bool = False, top: int = 3) -> dict:
    """Latest free-wall segments (by median TOS), scar excluded; ``segment`` is the first, or None."""
    allowed = FREE_WALL + (APICAL_FREE_WALL if include_apical else ())
    ranked = sorted(
        (r for r in table if r["segment"] in allowed and not r["scar"] and np.isfinite(r["tos_median_ms"])),
        key=lambda r: -r["tos_median_ms"],
    )
    best = ranked[0] if ranked else None
    rings = "basal, mid, apical" if include_apical else "basal, mid"
    ties = [r["segment"] for r in ranked[1:] if best["tos_median_ms"] - r["tos_median_ms"] <= NEAR_TIE_MS]
    return {
        "segment": best["segment"] if best else None,
        "name": best["name"] if best else None,
        "tos_median_ms": best["tos_median_ms"] if best else None,
        "near_ties": ties,
        "near_tie_ms": NEAR_TIE_MS,
        "ranked": [{k: r[k] for k in ("segment", "name", "tos_median_ms")} for r in ranked[:top]],
        "excluded_scar": [r["segment"] for r in table if r["scar"]],
        "rule": f"latest median TOS among free-wall segments ({rings}); septal segments never, scar segments "
        f"excluded; an exact tie goes to the lower segment number, segments within {NEAR_TIE_MS:g} ms are near_ties",
        "label": "decision support",
        "disclaimer": DISCLAIMER,
    }


def write_segments_csv(path, table: list[dict], lead: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = ["segment", "name", "tos_median_ms", "tos_mean_ms", "points", "late_fraction", "late", "septal", "scar"]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(keys + ["suggested_lead"])
        for r in table:
            w.writerow([r[k] for k in keys] + [bool(lead and lead["segment"] == r["segment"])])
    return path


TITLE = "Time to onset of shortening, AHA 17 segments"


def contrast_colour(rgba) -> str:
    """Black or white, whichever reads better on ``rgba`` (luma below 0.45: white)."""
    return "white" if 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] < 0.45 else "black"


def _ring_geometry():
    """(segment, inner radius, outer radius, start deg on the plot, span deg) of the 17 wedges."""
    out = []
    for ring, (r0, r1) in enumerate(((0.7, 1.0), (0.4, 0.7))):
        for i, s in enumerate((2, 3, 4, 5, 6, 1)):
            out.append((s + 6 * ring, r0, r1, PLOT_OFFSET_DEG + 60 * i, 60.0))
    for i, s in enumerate((14, 15, 16, 13)):
        out.append((s, 0.15, 0.4, PLOT_OFFSET_DEG + 15 + 90 * i, 90.0))
    out.append((17, 0.0, 0.15, 0.0, 360.0))
    return out


def write_bullseye_png(path, table: list[dict], lead: dict | None = None, title: str = TITLE,
                       cmap: str = TOS_CMAP, late_rule: str | None = None) -> Path:  # fmt: skip
    """Save :func:`bullseye_figure` as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bullseye_figure(table, lead, title, cmap, late_rule).savefig(str(path))
    return path


def bullseye_figure(table: list[dict], lead: dict | None = None, title: str = TITLE,
                    cmap: str = TOS_CMAP, late_rule: str | None = None):  # fmt: skip
    """AHA bullseye coloured by segment median TOS (white: no data), late segments starred, scar hatched, the
    suggested segment outlined, its near ties dashed; ``late_rule`` (e.g. "TOS >= 83 ms, the 75th percentile") explains the star."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Wedge

    values = {r["segment"]: r["tos_median_ms"] for r in table}
    scar = {r["segment"] for r in table if r["scar"]}
    late = {r["segment"] for r in table if r.get("late")}
    finite = [v for v in values.values() if np.isfinite(v)]
    norm = Normalize(min(finite, default=0.0), max(finite, default=1.0) + 1e-6)
    mappable = ScalarMappable(norm, cmap)
    fig = Figure(figsize=(6.2, 6.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.15, 0.76, 0.76))
    ax.set_aspect("equal")
    ax.axis("off")
    ties = set((lead or {}).get("near_ties") or [])
    for s, r0, r1, start, span in _ring_geometry():
        v = values[s]
        colour = mappable.to_rgba(v) if np.isfinite(v) else NO_DATA_COLOUR
        ink = contrast_colour(colour)
        ax.add_patch(Wedge((0, 0), r1, start, start + span, width=r1 - r0, facecolor=colour,
                           edgecolor="white" if np.isfinite(v) else "0.5", linewidth=1.5, gid=f"wedge-{s}"))  # fmt: skip
        if s in scar:  # the hatch in the text's colour: white hatching vanished on light (late) segments
            ax.add_patch(Wedge((0, 0), r1, start, start + span, width=r1 - r0, fill=False, edgecolor=ink,
                               linewidth=0.0, hatch="xx", gid=f"scar-{s}"))  # fmt: skip
        if lead and lead.get("segment") == s:
            ax.add_patch(Wedge((0, 0), r1, start, start + span, width=r1 - r0, fill=False, edgecolor="black",
                               linewidth=3.0, zorder=3, gid=f"lead-{s}"))  # fmt: skip
        elif s in ties:
            ax.add_patch(Wedge((0, 0), r1, start, start + span, width=r1 - r0, fill=False, edgecolor="black",
                               linewidth=1.5, linestyle="--", zorder=3, gid=f"tie-{s}"))  # fmt: skip
        mid = np.deg2rad(start + span / 2)
        rad = 0.0 if s == 17 else (r0 + r1) / 2
        text = f"{s}\n{v:.0f}{'*' if s in late else ''}" if np.isfinite(v) else f"{s}\n–"
        box = {"facecolor": colour, "edgecolor": "none", "pad": 1.0} if s in scar else None  # readable over hatch
        ax.text(rad * np.cos(mid), rad * np.sin(mid), text, ha="center", va="center", fontsize=8,
                color=ink, zorder=4, bbox=box, gid=f"segment-{s}")  # fmt: skip
    edge = SIDE_LABEL_RADIUS + 0.1
    ax.set_xlim(-edge, edge)
    ax.set_ylim(-edge, edge)
    for text, deg in (("anterior", 90), ("septal", 180), ("inferior", 270), ("lateral", 0)):
        xy = SIDE_LABEL_RADIUS * np.cos(np.deg2rad(deg)), SIDE_LABEL_RADIUS * np.sin(np.deg2rad(deg))
        ax.text(*xy, text, ha="center", va="center", fontsize=8, color="0.3", rotation=90 if deg in (0, 180) else 0,
                gid=f"side-{text}")  # fmt: skip
    cax = fig.add_axes((0.82, 0.2, 0.035, 0.56))
    fig.colorbar(mappable, cax=cax, label="segment median TOS (ms)")
    fig.suptitle(title, fontsize=11)
    note = "DECISION SUPPORT, not a diagnosis"
    if lead and lead.get("segment"):
        note += f" - suggested LV lead segment: {lead['segment']} ({lead['name']}, {lead['tos_median_ms']:.0f} ms)"
    lines = [(note, {"fontsize": 8, "weight": "bold"})]
    if near_ties_text(lead):
        lines.append((f"about as late (dashed outline), {near_ties_text(lead)}", {"fontsize": 8}))
    if late_rule:
        lines.append((f"* late: {late_rule}", {"fontsize": 7, "color": "0.3"}))
    legend = "scar hatched (never suggested), septum never suggested"
    if len(finite) < len(values):
        legend += "; white, '–': no myocardium in the segment"
    lines.append((legend, {"fontsize": 7, "color": "0.3"}))
    for i, (text, style) in enumerate(lines):
        fig.text(0.5, 0.015 + 0.032 * (len(lines) - 1 - i), text, ha="center", **style)
    return fig
