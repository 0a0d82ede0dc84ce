"""Label colours as readers with deutan, protan or tritan colour vision see them.

Colour-vision deficiency is simulated with the Machado, Oliveira & Fernandes (2009) matrices at severity 1.0 on
linear RGB (sRGB linearised first); differences are CIEDE2000 (scikit-image). Every label set (MR segments, report
overlay, icons, CT segments) must stay apart pairwise and from the black background and a mid-grey MR image, opaque
(3D surfaces, icons, outlines) and at half opacity over grey (Slicer's 2D fill, the report).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from skimage.color import deltaE_ciede2000

from CardiacDiffusionLib.labels import CT_LABELS, MR_LABEL_COLORS, MR_LABELS
from CardiacDiffusionLib.report import LABEL_ALPHA, LABEL_CMAP, REPORT_LABEL_COLORS
from CardiacDiffusionLib.slicer_adapter.synthetic import CT_COLORS
from helpers import CVD, as_seen

BLACK, GREY = (0.0, 0.0, 0.0), (0.5, 0.5, 0.5)
#: the colours these replaced (Slicer's generic red / brown / blue; the earlier CT set)
OLD_MR = {"LV": (0.85, 0.20, 0.20), "MYO": (0.55, 0.35, 0.20), "RV": (0.20, 0.40, 0.85)}


def closest(colours: dict[str, tuple], vision: str, backgrounds=(), alpha: float = 1.0, over=GREY):
    """(smallest CIEDE2000, the pair) among ``colours`` drawn at ``alpha`` over ``over``, and against each
    background (which is drawn as is)."""
    names = list(colours) + [f"bg{b}" for b in backgrounds]
    drawn = [alpha * np.array(c) + (1 - alpha) * np.array(over) for c in colours.values()] + list(backgrounds)
    lab = as_seen(np.array(drawn), vision)
    pairs = [(i, j) for i, j in itertools.combinations(range(len(names)), 2) if i < len(colours)]
    d = {(names[i], names[j]): float(deltaE_ciede2000(lab[i], lab[j])) for i, j in pairs}
    worst = min(d, key=d.get)
    return d[worst], worst


def test_simulation_finds_the_confusion_the_old_colours_had():
    """Known answers: white, grey and black look the same to everyone; Slicer's red LV and brown myocardium,
    24 apart for normal vision, were under 1 apart for protan and 11 for deutan readers."""
    for vision in CVD:
        greys = [(1, 1, 1), GREY, BLACK]
        np.testing.assert_allclose(as_seen(greys, vision), as_seen(greys, "normal"), atol=0.3)
    pair = {k: OLD_MR[k] for k in ("LV", "MYO")}
    assert closest(pair, "normal")[0] == pytest.approx(20.5, abs=0.2)
    assert closest(pair, "protan")[0] < 1.0
    assert closest(pair, "deutan")[0] < 11.0
    assert closest(OLD_MR, "deutan", alpha=0.5, over=(0.8, 0.8, 0.8))[0] < 2.0  # the report's old complaint


def test_one_palette_for_segments_report_and_ct():
    assert REPORT_LABEL_COLORS is MR_LABEL_COLORS and set(MR_LABEL_COLORS) == set(MR_LABELS.values())
    for value, name in MR_LABELS.items():  # the report's overlay draws label value v in MR_LABEL_COLORS
        np.testing.assert_allclose(LABEL_CMAP(value), (*MR_LABEL_COLORS[name], LABEL_ALPHA))
    assert set(CT_COLORS) == set(CT_LABELS.values())
    assert all(CT_COLORS[n] == MR_LABEL_COLORS[n] for n in ("LV", "MYO", "RV"))
    # conventional hues kept: LV cavity reddest, RV cavity bluest, myocardium the darkest
    lab = {n: as_seen([c], "normal")[0] for n, c in MR_LABEL_COLORS.items()}
    assert lab["LV"][1] > lab["RV"][1] and lab["RV"][2] < 0 < lab["MYO"][2] and lab["MYO"][0] < 30


@pytest.mark.parametrize("vision", list(CVD))
def test_mr_label_colours_stay_apart(vision):
    """Opaque (3D surfaces, icons): >= 40 pairwise, >= 20 from black and mid grey; at half opacity over dark, mid
    and light grey (Slicer's 2D fill, the report): >= 18 pairwise, >= 10 from the mid-grey image itself."""
    gap, pair = closest(MR_LABEL_COLORS, vision)
    assert gap >= 40, (vision, gap, pair)
    gap, pair = closest(MR_LABEL_COLORS, vision, backgrounds=(BLACK, GREY))
    assert gap >= 20, (vision, gap, pair)
    for grey in (0.2, 0.5, 0.8):
        gap, pair = closest(MR_LABEL_COLORS, vision, alpha=LABEL_ALPHA, over=(grey,) * 3)
        assert gap >= 18, (vision, grey, gap, pair)
    gap, pair = closest(MR_LABEL_COLORS, vision, backgrounds=(GREY,), alpha=LABEL_ALPHA)
    assert gap >= 10, (vision, gap, pair)


@pytest.mark.parametrize("vision", list(CVD))
def test_ct_label_colours_stay_apart(vision):
    """All 8 CT structures opaque: >= 13 pairwise and from black and mid grey; at half opacity over dark, mid and
    light grey (contrast-filled blood is bright): >= 7 pairwise (the earlier set: 0.9 opaque, LV against
    myocardium, for protan readers)."""
    gap, pair = closest(CT_COLORS, vision, backgrounds=(BLACK, GREY))
    assert gap >= 13, (vision, gap, pair)
    for grey in (0.2, 0.5, 0.8):
        gap, pair = closest(CT_COLORS, vision, alpha=0.5, over=(grey,) * 3)
        assert gap >= 7, (vision, grey, gap, pair)
