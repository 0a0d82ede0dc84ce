"""What the pictures show a clinician: AHA bullseye layout, colour maps, text placement, orientation letters.

Every assertion is about the figure the product draws (matplotlib's renderer, the VTK lookup table it uses),
not a pixel hash.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.text import Text
from skimage.color import deltaE_ciede2000

from CardiacDiffusionLib.activation.bullseye import (
    PLOT_OFFSET_DEG,
    TOS_CMAP,
    _ring_geometry,
    bullseye_figure,
    segment_of,
    segment_table,
    suggest_lead,
)
from CardiacDiffusionLib.report import (
    LABEL_ALPHA,
    REPORT_LABEL_COLORS,
    direction_letters,
    edge_letters,
    report_figure,
    sax_picks,
)
from helpers import CVD, as_seen


def _texts(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    found = {id(t): t for t in fig.findobj(Text) if t.get_text() and t.get_visible()}
    return renderer, list(found.values())


def _overlap(a, b, slack: float = 1.0) -> bool:
    return a.x0 + slack < b.x1 and b.x0 + slack < a.x1 and a.y0 + slack < b.y1 and b.y0 + slack < a.y1


def _lbbb_table(scar=()):
    """Septum early (40 ms), lateral wall late (130 ms), the rest 85 ms: 10 points per segment."""
    segments = np.repeat(np.arange(1, 18), 10)
    tos = np.select([np.isin(segments, (2, 3, 8, 9, 14)), np.isin(segments, (5, 6, 11, 12, 16))], [40.0, 130.0], 85.0)
    table = segment_table(segments, tos, late=tos > 100, late_threshold_ms=120.0, scar=scar)
    return table, suggest_lead(table)


# ---- the AHA bullseye ---------------------------------------------------------------------------
AHA_CENTRE_DEG = {1: 90, 2: 150, 3: 210, 4: 270, 5: 330, 6: 30, 13: 90, 14: 180, 15: 270, 16: 0}


def test_bullseye_segments_sit_where_the_aha_2002_bullseye_has_them():
    """Anterior (1, 7, 13) at the top, septum (2-3, 8-9, 14) on the left, inferior at the bottom, lateral right,
    basal outermost, apex (17) in the centre: read from the numbers the figure draws."""
    table, lead = _lbbb_table()
    renderer, texts = _texts(bullseye_figure(table, lead))
    ax = next(t for t in texts if t.get_gid() == "segment-1").axes
    for t in texts:
        gid = t.get_gid() or ""
        if not gid.startswith("segment-"):
            continue
        s = int(gid.split("-")[1])
        assert t.get_text().split("\n")[0] == str(s)
        x, y = t.get_position()
        radius, deg = np.hypot(x, y), np.rad2deg(np.arctan2(y, x)) % 360
        ring = 17 if s == 17 else (s - 1) // 6 if s <= 12 else 2
        assert {0: 0.7 < radius < 1.0, 1: 0.4 < radius < 0.7, 2: 0.15 < radius < 0.4, 17: radius == 0}[ring], s
        if s != 17:
            expected = AHA_CENTRE_DEG[s if s <= 6 or s >= 13 else s - 6]
            assert abs((deg - expected + 180) % 360 - 180) < 1e-6, (s, deg)
    sides = {t.get_text(): t for t in texts if (t.get_gid() or "").startswith("side-")}
    disc = ax.transData.transform([[-1, -1], [1, 1]])  # the outer ring's box in pixels
    assert sides["anterior"].get_window_extent(renderer).y0 > disc[1, 1]  # labels clear of the rings
    assert sides["inferior"].get_window_extent(renderer).y1 < disc[0, 1]
    assert sides["septal"].get_window_extent(renderer).x1 < disc[0, 0]
    assert sides["lateral"].get_window_extent(renderer).x0 > disc[1, 0]


def test_bullseye_wedges_hold_the_segments_segment_of_assigns():
    """A point at angle a from its level's anterior insertion is drawn at polar angle a + PLOT_OFFSET_DEG: the
    wedge there is the segment segment_of gives it, for every ring (sectors counter-clockwise seen from the apex)."""
    wedges = _ring_geometry()
    for height, (r0, r1) in ((0.1, (0.7, 1.0)), (0.5, (0.4, 0.7)), (0.8, (0.15, 0.4))):
        for a in np.arange(0.5, 360, 5.0):
            s = int(segment_of(np.deg2rad(a), height))
            plot = (a + PLOT_OFFSET_DEG) % 360
            holder = [w[0] for w in wedges if w[1] == r0 and (plot - w[3]) % 360 < w[4]]
            assert holder == [s], (height, a, holder, s)
    assert segment_of(0.3, 0.95) == 17


def test_bullseye_colour_map_lightness_rises_and_reads_in_colour_blindness():
    """Early -> late is dark -> light for every reader (turbo: L* 12 at the earliest, 24 at the latest, 91 between,
    so early and late looked alike to a colour-blind reader or in grey)."""
    from matplotlib import colormaps

    colours = colormaps[TOS_CMAP](np.linspace(0, 1, 64))[:, :3]
    for kind in CVD:
        lightness = as_seen(colours, kind)[:, 0]
        assert np.all(np.diff(lightness) > 0), kind
        assert lightness[-1] - lightness[0] > 60, kind
    fig = bullseye_figure(*_lbbb_table())
    bar = fig.axes[1]
    assert bar.get_ylabel() == "segment median TOS (ms)"
    assert bar.collections[0].cmap.name == TOS_CMAP  # the bar shows the wedges' map


def test_bullseye_text_inside_the_picture_and_apart_scar_hatch_contrasts_ties_dashed():
    table, lead = _lbbb_table(scar=[11, 3])
    assert (lead["segment"], lead["near_ties"]) == (5, [6, 12])
    fig = bullseye_figure(table, lead, late_rule="segment median TOS >= 120 ms (TOS >= 75th percentile)")
    renderer, texts = _texts(fig)
    box = fig.bbox
    extents = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    for text, e in extents:
        assert box.x0 <= e.x0 and e.x1 <= box.x1 and box.y0 <= e.y0 and e.y1 <= box.y1, text
    for i, (a, ea) in enumerate(extents):
        for b, eb in extents[i + 1:]:
            assert not _overlap(ea, eb), (a, b)
    words = " ".join(t for t, _ in extents)
    assert "DECISION SUPPORT, not a diagnosis" in words and "* late: segment median TOS >= 120 ms" in words
    assert "(dashed outline), within 5 ms: segment(s) 6, 12" in words
    patches = {p.get_gid(): p for p in fig.axes[0].patches if p.get_gid()}
    assert {"lead-5", "tie-6", "tie-12", "scar-3", "scar-11"} <= set(patches)
    assert patches["tie-6"].get_linestyle() == "--"
    luma = lambda c: 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]  # noqa: E731
    for s in (3, 11):  # the hatch (the scar patch's edge colour) against the segment's fill: 11 late, 3 early
        fill, hatch = patches[f"wedge-{s}"].get_facecolor(), patches[f"scar-{s}"].get_edgecolor()
        assert abs(luma(hatch) - luma(fill)) > 0.5, (s, hatch, fill)


# ---- the reconstruction report ------------------------------------------------------------------
SUNNYBROOK = Path(__file__).resolve().parents[2] / "shared" / "data" / "sunnybrook-SC-HF-I-1"


@pytest.fixture(scope="module")
def report():
    from CardiacDiffusionLib.phantoms.scanner import make_subject
    from CardiacDiffusionLib.reconstruction.lax_check import lax_dice
    from CardiacDiffusionLib.reconstruction.volume import reconstruct

    subject = make_subject(7, matrix=64)
    volumes = {m: reconstruct(subject.sax, m, 2.0).labels for m in ("nearest", "shape")}
    table = {m: lax_dice(v, subject.lax_labels["2ch"]) for m, v in volumes.items()}  # 2ch: no RV, n/a
    fig = report_figure(subject.sax, subject.lax["2ch"], subject.lax_labels["2ch"], volumes, table, "phantom 7, LAX 2ch")
    yield subject, table, fig
    plt.close(fig)


def test_report_label_colours_stay_apart_for_colour_blind_readers():
    """LV cavity, myocardium and RV cavity as drawn (alpha over dark, mid and light grey) differ by CIEDE2000 >= 18
    for normal, protan, deutan and tritan vision (Slicer's red and brown: 2.2 for deutan readers)."""
    names = list(REPORT_LABEL_COLORS)
    for grey in (0.2, 0.5, 0.8):
        drawn = np.array([LABEL_ALPHA * np.array(REPORT_LABEL_COLORS[n]) + (1 - LABEL_ALPHA) * grey for n in names])
        for kind in CVD:
            lab = as_seen(drawn, kind)
            gaps = [deltaE_ciede2000(lab[i], lab[j]) for i in range(3) for j in range(i + 1, 3)]
            assert min(gaps) >= 18, (grey, kind, gaps)


def test_edge_letters_are_the_images_patient_directions(report):
    """Identity LPS axes: right edge L (radiological), bottom P; the report's letters equal SimpleITK's index ->
    physical directions of the SAX volume and the LAX plane drawn, column index to the right as stored."""
    assert edge_letters((1, 0, 0), (0, 1, 0)) == {"right": "L", "left": "R", "bottom": "P", "top": "A"}
    assert edge_letters((0.6, -0.8, 0.0), (0, 0, -1))["right"] == "AL"
    subject, _, fig = report
    k = int(sax_picks(subject.sax)[0])
    for ax, image, pixels in ((fig.axes[0], subject.sax.to_image(), subject.sax.pixels[k]),
                              (fig.axes[4], subject.lax_labels["2ch"], subject.lax["2ch"])):  # fmt: skip
        o = np.array(image.TransformIndexToPhysicalPoint((0, 0, 0)))
        right = np.array(image.TransformIndexToPhysicalPoint((1, 0, 0))) - o
        down = np.array(image.TransformIndexToPhysicalPoint((0, 1, 0))) - o
        drawn = {t.get_gid(): t.get_text() for t in ax.texts if (t.get_gid() or "").startswith("edge-")}
        assert drawn == {"edge-right": direction_letters(right), "edge-left": direction_letters(-right),
                         "edge-bottom": direction_letters(down), "edge-top": direction_letters(-down)}  # fmt: skip
        shown = np.asarray(ax.images[0].get_array())
        stored = pixels if isinstance(pixels, np.ndarray) else sitk.GetArrayFromImage(pixels)[0]
        assert np.array_equal(shown, stored)  # drawn as stored: no flip or transpose


@pytest.mark.skipif(not (SUNNYBROOK / "dicom").is_dir(), reason="shared Sunnybrook data missing")
def test_sax_edge_letters_follow_the_dicom_header_of_real_data():
    """Sunnybrook SC-HF-I-1: the right edge is the header's ImageOrientationPatient row cosine, the bottom its
    column cosine, and the drawn pixels are the file's (a DICOM viewer shows the same)."""
    import pydicom

    from CardiacDiffusionLib.io.dicom import read_dicom_stack

    stack = read_dicom_stack(SUNNYBROOK / "dicom", phase=0)
    files = sorted((SUNNYBROOK / "dicom").glob("*.dcm"), key=lambda f: int(f.stem))
    ds = pydicom.dcmread(files[0])
    cosines = np.array(ds.ImageOrientationPatient, float)
    edges = edge_letters(stack.row_dir, stack.col_dir)
    assert edges["right"] == direction_letters(cosines[:3]) and edges["bottom"] == direction_letters(cosines[3:])
    position = np.array(ds.ImagePositionPatient, float)
    k = int(np.argmin(np.linalg.norm(stack.origins - position, axis=1)))
    assert np.allclose(stack.pixels[k], ds.pixel_array * float(getattr(ds, "RescaleSlope", 1)) +
                       float(getattr(ds, "RescaleIntercept", 0)))  # fmt: skip


def test_report_text_readable_table_matches_the_numbers_and_says_decision_support(report):
    """Every text inside the picture and clear of the others and of other panels' images; the Dice cells are the
    table's numbers to 3 decimals (n/a for a label in neither); units, legend and decision support present."""
    _, table, fig = report
    renderer, texts = _texts(fig)
    box = fig.bbox
    extents = [(t, t.get_window_extent(renderer)) for t in texts]
    images = [(ax, ax.get_window_extent(renderer)) for ax in fig.axes if ax.images]
    for t, e in extents:
        assert box.x0 <= e.x0 and e.x1 <= box.x1 and box.y0 <= e.y0 and e.y1 <= box.y1, t.get_text()
        for ax, frame in images:
            if t.axes is not ax and not (t.get_gid() or "").startswith("edge-"):
                assert not _overlap(e, frame), (t.get_text(), "on a panel")
    cell_texts = {t for t, _ in extents if type(t.axes).__name__ == "Axes" and t.axes.tables}
    lone = [(t, e) for t, e in extents if t not in cell_texts]
    for i, (a, ea) in enumerate(lone):
        for b, eb in lone[i + 1:]:
            assert not _overlap(ea, eb), (a.get_text(), b.get_text())
    cells = fig.axes[-1].tables[0].get_celld()
    shown = {(r, c): cell.get_text().get_text() for (r, c), cell in cells.items()}
    header = [shown[(0, c)] for c in range(3)]
    assert header == ["Dice LV cavity", "Dice LV myocardium", "Dice RV cavity"]
    for r, (method, dice) in enumerate(table.items(), start=1):
        assert shown[(r, -1)] == method
        for c, label in enumerate(("LV", "MYO", "RV")):
            assert shown[(r, c)] == ("n/a" if dice[label] is None else f"{dice[label]:.3f}")
    assert shown[(1, 2)] == "n/a" and 0.8 < float(shown[(1, 0)]) <= 1.0
    words = " ".join(t.get_text() for t, _ in extents)
    assert "0 = no overlap, 1 = identical" in words and "decision support, not a medical device" in words
    assert {"LV cavity", "LV myocardium", "RV cavity"} <= {t.get_text() for t, _ in extents}


# ---- the 3D picture -----------------------------------------------------------------------------
def test_3d_picture_uses_the_bullseye_colours_and_its_right_edge_words_are_true(tmp_path):
    """The VTK lookup table is the bullseye's map (lightness rising early -> late; it was an HSV rainbow, red/green);
    a sphere whose TOS grows towards the patient's posterior, seen from the patient's left with the base (superior)
    up, is lighter on the right: the edge the picture calls posterior."""
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

    from CardiacDiffusionLib.activation.render import direction_words, render_tos_png, screen_axes, tos_lookup_table

    lut = tos_lookup_table(20.0, 140.0)
    rgb = np.array([lut.GetTableValue(i)[:3] for i in range(0, lut.GetNumberOfTableValues(), 8)])  # 8-bit steps
    assert np.all(np.diff(as_seen(rgb, "deutan")[:, 0]) > 0) and np.all(np.diff(as_seen(rgb, "protan")[:, 0]) > 0)
    assert lut.GetTableRange() == (20.0, 140.0)
    right, up, side = screen_axes((0, 0, -1), (1, 0, 0))
    assert np.allclose(right, (0, 1, 0)) and np.allclose(up, (0, 0, 1)) and np.allclose(side, (1, 0, 0))
    assert direction_words(right) == "posterior" and direction_words((0.6, -0.8, 0.1)) == "anterior-left"

    sphere = vtk.vtkSphereSource()
    sphere.SetRadius(30.0)
    sphere.SetThetaResolution(48)
    sphere.SetPhiResolution(48)
    sphere.Update()
    mesh = sphere.GetOutput()
    y = vtk_to_numpy(mesh.GetPoints().GetData())[:, 1]
    tos = numpy_to_vtk(80.0 + 2.0 * y, deep=True)
    tos.SetName("TOS_ms")
    mesh.GetPointData().AddArray(tos)
    path = render_tos_png(mesh, tmp_path / "sphere.png", (0, 0, -1), (1, 0, 0))
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[..., :3].astype(float)
    body = pixels.min(axis=2) < 230  # not the white background
    body[:, int(0.8 * body.shape[1]):] = False  # nor the colour bar
    rows, cols = np.nonzero(body[60:-40])  # nor the captions
    middle = np.median(cols)
    luma = pixels[60:-40][rows, cols] @ (0.299, 0.587, 0.114)
    assert luma[cols > middle + 20].mean() > luma[cols < middle - 20].mean() + 30  # measured 107 vs 63


def _drawn_spans(fig, renderer) -> list[tuple[float, float]]:
    """Vertical (y0, y1) pixel spans of what the figure draws: image panels, texts, table cells, legends."""
    boxes = [ax.get_window_extent(renderer) for ax in fig.axes if ax.images]
    boxes += [t.get_window_extent(renderer) for t in fig.findobj(Text) if t.get_text() and t.get_visible()]
    boxes += [cell.get_window_extent(renderer) for ax in fig.axes for table in ax.tables
              for cell in table.get_celld().values()]  # fmt: skip
    boxes += [legend.get_window_extent(renderer) for legend in fig.findobj(plt.matplotlib.legend.Legend)]
    return sorted((b.y0, b.y1) for b in boxes)


@pytest.mark.parametrize("methods", [2, 4])
def test_report_text_legible_at_800_px_wide_and_no_empty_band(report, methods):
    """Shown 800 px wide (a README, a laptop window) every text is >= 9 pt and its em >= 9 px there (titles, legend
    and footer were 7-8 pt on a 15 in figure: about 6 px); no blank band taller than 0.25 in splits the page (there
    was 0.5 in above the Dice table); no text overlaps (checked with 2 and 4 methods: 4 and 5 columns)."""
    subject, table, two = report
    fig = two
    if methods == 4:
        volumes = {m: subject.lax_labels["2ch"] for m in ("nearest", "linear", "shape", "dmcvr")}  # as the screenshot
        fig = report_figure(subject.sax, subject.lax["2ch"], subject.lax_labels["2ch"], volumes,
                            {f"{m} (2ch)": table["nearest"] for m in volumes},
                            "CardiacDiffusion: MR phantom 7, SAX stack to 2 mm, checked on the 2ch LAX plane")  # fmt: skip
    try:
        renderer, texts = _texts(fig)
        shown = 800 / fig.bbox.width  # the figure scaled to 800 px wide
        for t in texts:
            size_pt = t.get_fontsize()
            assert size_pt >= 9 and size_pt * fig.dpi / 72 * shown >= 9, (t.get_text()[:40], size_pt)
        spans = _drawn_spans(fig, renderer)
        top, gaps = spans[0][1], []
        for y0, y1 in spans[1:]:
            gaps.append(y0 - top)
            top = max(top, y1)
        assert max(gaps) <= 0.25 * fig.dpi, max(gaps) / fig.dpi
        assert spans[0][0] <= 0.25 * fig.dpi and fig.bbox.height - top <= 0.25 * fig.dpi  # no blank margin either
        cells = [c for ax in fig.axes for table in ax.tables for c in table.get_celld().values()]
        inside = {id(c.get_text()) for c in cells}
        lone = [(t, t.get_window_extent(renderer)) for t in texts if id(t) not in inside]  # legend texts too
        for i, (a, ea) in enumerate(lone):
            for b, eb in lone[i + 1:]:
                assert not _overlap(ea, eb), (a.get_text(), b.get_text())
        for legend in fig.findobj(plt.matplotlib.legend.Legend):  # the label legend beside the table, not on it
            for cell in cells:
                assert not _overlap(legend.get_window_extent(renderer), cell.get_window_extent(renderer))
    finally:
        if fig is not two:
            plt.close(fig)
