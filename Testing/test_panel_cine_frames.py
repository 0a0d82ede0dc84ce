"""The Reconstruction panel's "All cine frames" on real slicer-core nodes: when it applies (a cine's proxy, and which
browser), what it refuses in the panel's words, and a run launched as the panel's Apply launches it (the module's
real Logic, Qt stubbed) with per-frame progress, and Cancel within or between frames leaving the scene as it was."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.geometry.stack import SliceStack
from CardiacDiffusionLib.reconstruction.volume import reconstruct
from helpers import load_panel

pytestmark = pytest.mark.mrml

TIMES = ("0", "160", "320")  # ms, one per frame
LABELLED = (0, 1)  # frames with SAX labels (ED, ES)
SPACING = 2.0
UI = Path(__file__).resolve().parents[1] / "CardiacDiffusion" / "Reconstruction" / "Resources" / "UI" / "Reconstruction.ui"


@pytest.fixture(scope="module")
def frames() -> list[tuple[sitk.Image, sitk.Image | None]]:
    """Three different frames of an MR phantom's SAX stack (ED, ES, a blend); labels on ED and ES."""
    from CardiacDiffusionLib.phantoms.scanner import make_subject

    ed, es = (make_subject(seed=3, phase=p, matrix=48, pixel_mm=3.0).sax for p in ("ED", "ES"))
    a, b = sitk.GetArrayFromImage(ed.to_image()), sitk.GetArrayFromImage(es.to_image())
    out = []
    for k, array in enumerate((a, b, 0.5 * (a + b))):
        image = sitk.GetImageFromArray(array.astype(np.float32))
        image.CopyInformation(ed.to_image())
        out.append((image, [ed, es][k].to_image(labels=True) if k in LABELLED else None))
    return out


def make_cine(scene, frames):
    """Sequence 'cine' (time, ms), sequence 'cine labels' (ED, ES) and browser 'cine browser' showing frame 3."""
    import slicer

    from CardiacDiffusionLib.slicer_adapter import mrml

    cine = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine")
    labels = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine labels")
    for sequence in (cine, labels):
        sequence.SetIndexName("time")
        sequence.SetIndexUnit("ms")
    for k, (image, label_image) in enumerate(frames):
        cine.SetDataNodeAtValue(mrml.volume_node_from_image(None, image, node=slicer.vtkMRMLScalarVolumeNode()), TIMES[k])
        if label_image is not None:
            node = mrml.volume_node_from_image(None, label_image, node=slicer.vtkMRMLLabelMapVolumeNode())
            labels.SetDataNodeAtValue(node, TIMES[k])
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "cine browser")
    browser.SetAndObserveMasterSequenceNodeID(cine.GetID())
    browser.AddSynchronizedSequenceNodeID(labels.GetID())
    browser.SetSelectedItemNumber(2)
    scene.logics[2].UpdateProxyNodesFromSequences(browser)  # Slicer's logic does this by itself
    return cine, labels, browser


def node_ids(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def array(node) -> np.ndarray:
    from CardiacDiffusionLib.slicer_adapter import mrml

    return sitk.GetArrayFromImage(mrml.image_from_volume_node(node))


def run_as_the_panel(module, scene, sax, labels, lax=(None, None, None), outputs=(None, None)):
    """onApplyButton's call: the panel's fields through ``cine.panel_run_options`` into ``logic.run(wait=False)``."""
    from CardiacDiffusionLib.slicer_adapter import cine

    reports = []
    chosen = cine.panel_run_options(True, sax, labels, list(lax), *outputs)
    job = module.ReconstructionLogic().run(sax, labels, list(lax), method="shape", spacing=SPACING, wait=False,
                                           progress_callback=lambda f, t: reports.append((f, t)), **chosen)  # fmt: skip
    return job, reports


def poll_until(job, done, timeout: float = 300.0) -> None:
    """The panel's timer: ``job.poll()`` every 0.2 s until ``done()``."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        job.poll()
        time.sleep(0.2)


# ---- when the box applies, what it refuses -------------------------------------------------------------------------
def test_all_frames_is_offered_for_a_cine_proxy_only(mrml_scene, frames):
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.cine import all_frames_offer

    cine, labels, browser = make_cine(mrml_scene, frames)
    offer = all_frames_offer(browser.GetProxyNode(cine))
    assert offer.enabled and offer.browser is browser and offer.sequence is cine and offer.count == 3
    assert offer.tooltip.startswith("Reconstruct each of the 3 frames of sequence 'cine' (sequence browser 'cine "
                                    "browser'), not only the shown one, into new sequences that join its browser")  # fmt: skip
    plain = mrml.volume_node_from_image(mrml_scene, frames[0][0], "ED")
    for node, why in ((plain, "SAX volume 'ED' is a plain volume"), (None, "no SAX volume is selected")):
        offer = all_frames_offer(node)
        assert not offer.enabled and offer.browser is None and offer.count == 0
        assert offer.tooltip.startswith(f"Off: {why}, not a loaded cine. Load the cine as a sequence"), offer.tooltip
    # a sequence emptied after loading: its browser still has the proxy, but there is no frame to reconstruct
    cine.RemoveAllDataNodes()
    offer = all_frames_offer(browser.GetProxyNode(cine))
    assert not offer.enabled and offer.browser is browser
    assert offer.tooltip == "Off: sequence 'cine' (sequence browser 'cine browser') holds no frame"


def test_panel_run_options_refuse_in_the_panels_words(mrml_scene, frames):
    """Ticked on a cine: frames='all' and no output nodes; plain SAX labels, labels of another browser and LAX labels
    are refused before anything starts, naming the panel's fields; unticked or a plain SAX volume: the shown frame."""
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.cine import ALL_FRAMES, LAX_FIELDS, panel_run_options

    cine, labels, browser = make_cine(mrml_scene, frames)
    sax, label_proxy = browser.GetProxyNode(cine), browser.GetProxyNode(labels)
    plain = mrml.volume_node_from_image(mrml_scene, frames[0][0], "ED")
    plain_labels = mrml.volume_node_from_image(mrml_scene, frames[0][1], "ED labels", labelmap=True)
    out_volume = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "out")
    out_segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out seg")
    other = mrml_scene.AddNewNodeByClass("vtkMRMLSequenceNode", "other labels")
    other.SetDataNodeAtValue(plain_labels, "0")
    other_browser = mrml_scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "other browser")
    other_browser.SetAndObserveMasterSequenceNodeID(other.GetID())
    mrml_scene.logics[2].UpdateProxyNodesFromSequences(other_browser)
    before = node_ids(mrml_scene)

    outputs = (out_volume, out_segmentation)
    shown = {"frames": None, "output_volume": out_volume, "output_segmentation": out_segmentation}
    assert panel_run_options(False, sax, plain_labels, [plain_labels], *outputs) == shown  # unticked: as before
    assert panel_run_options(True, plain, plain_labels, [plain_labels], *outputs) == shown  # the box is off there
    several = {"frames": "all", "output_volume": None, "output_segmentation": None}
    assert panel_run_options(True, sax, label_proxy, [None] * 3, *outputs) == several
    assert panel_run_options(True, sax, None, [], *outputs) == several

    with pytest.raises(InputError) as refused:
        panel_run_options(True, sax, plain_labels, [None] * 3)
    assert str(refused.value) == (
        "SAX labels 'ED labels': a plain node; with All cine frames ticked choose as SAX labels the labels a label "
        "sequence in sequence browser 'cine browser' shows (labels of some frames, e.g. ED and ES, are enough), or "
        "leave SAX labels empty, or untick All cine frames to reconstruct the shown frame with these labels")
    with pytest.raises(InputError, match=r"^SAX labels 'other labels': shown by sequence browser 'other browser', "
                                         r"not 'cine browser'; with All cine frames ticked choose"):
        panel_run_options(True, sax, other_browser.GetProxyNode(other), [None] * 3)
    with pytest.raises(InputError) as refused:
        panel_run_options(True, sax, label_proxy, [None, plain_labels, None])
    assert str(refused.value) == (
        "LAX labels 2 'ED labels': the LAX Dice check is of one reconstructed frame; with All cine frames ticked leave "
        "LAX labels 1-3 empty, or untick All cine frames to reconstruct the shown frame with the check")
    assert node_ids(mrml_scene) == before  # refused before anything was made
    # the words are the panel's: its check box text and field labels
    ui = ET.parse(UI).getroot()
    texts = {p.findtext("string") for p in ui.iter("property") if p.get("name") == "text"}
    assert {ALL_FRAMES, "SAX labels:", *(f"{f}:" for f in LAX_FIELDS)} <= texts


# ---- a run as the panel launches it --------------------------------------------------------------------------------
def test_all_frames_run_reports_each_frame_and_joins_the_browser(mrml_scene, frames, monkeypatch):
    from CardiacDiffusionLib.slicer_adapter import cine as cine_module
    from CardiacDiffusionLib.slicer_adapter.cine import FramesJob, FramesResult

    module = load_panel("Reconstruction", monkeypatch, mrml_scene)
    cine, labels, browser = make_cine(mrml_scene, frames)
    sax, label_proxy = browser.GetProxyNode(cine), browser.GetProxyNode(labels)
    shown = array(sax)
    job, reports = run_as_the_panel(module, mrml_scene, sax, label_proxy)
    assert isinstance(job, FramesJob)
    poll_until(job, lambda: job.result is not None)
    result = job.result
    assert isinstance(result, module.FramesResult) and isinstance(result, FramesResult)  # onTimer's branch

    # each frame's result is the Lib's shape reconstruction of that frame (with its labels on ED and ES)
    assert [result.volumes.GetNthIndexValue(i) for i in range(3)] == list(TIMES)
    assert [result.labels.GetNthIndexValue(i) for i in range(2)] == ["0", "160"]
    for k, (image, label_image) in enumerate(frames):
        want = reconstruct(SliceStack.from_image(image, label_image), "shape", SPACING)
        np.testing.assert_allclose(array(result.volumes.GetNthDataNode(k)), sitk.GetArrayFromImage(want.image), atol=1e-4)
        if k in LABELLED:
            np.testing.assert_array_equal(array(result.labels.GetNthDataNode(k)), sitk.GetArrayFromImage(want.labels))
    assert browser.IsSynchronizedSequenceNode(result.volumes) and browser.IsSynchronizedSequenceNode(result.labels)
    assert browser.GetSelectedItemNumber() == 2
    np.testing.assert_array_equal(array(sax), shown)

    # progress: one start line per frame at (k - 1) / 3 of the bar, each frame's own steps within its third, rising
    starts = [(f, t) for f, t in reports if t.endswith(("with SAX labels", "without SAX labels"))]
    assert starts == [
        (0.0, "frame 1 of 3 (time 0 ms) of sequence 'cine': with SAX labels"),
        (pytest.approx(1 / 3), "frame 2 of 3 (time 160 ms) of sequence 'cine': with SAX labels"),
        (pytest.approx(2 / 3), "frame 3 of 3 (time 320 ms) of sequence 'cine': without SAX labels"),
    ]
    fractions = [f for f, _ in reports if f is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    for k in (1, 2, 3):
        within = [f for f, t in reports if t.startswith(f"frame {k}: ") and f is not None]
        assert len(within) >= 4 and (k - 1) / 3 <= min(within) and max(within) == pytest.approx(k / 3), (k, within)
    assert reports[-1] == (1.0, "done")

    # the panel's log after it
    summary = cine_module.frames_summary(result)
    assert summary[0] == ("new sequences 'cine shape' (3 frames) and 'cine shape labels' (2 frames) joined sequence "
                          "browser 'cine browser': play or step the cine to see them")  # fmt: skip
    assert summary[1:4] == [f"made: {f}" for f in result.frames]
    assert summary[3] == "made: frame 3 of 3 (time 320 ms) of sequence 'cine', without SAX labels"


@pytest.mark.parametrize("when", ["within frame 2", "after the last frame, before its sequences"])
def test_cancel_leaves_the_scene_as_it_was(mrml_scene, frames, monkeypatch, when):
    """Cancel while frame 2's child runs, or once the last frame's child has exited but before the panel's next tick
    builds the sequences: no new node (no half-made sequence), the cine and its browser as they were, no temporary
    folder left; the log says so, and a late timer tick cannot add anything."""
    module = load_panel("Reconstruction", monkeypatch, mrml_scene)
    cine, labels, browser = make_cine(mrml_scene, frames)
    sax, label_proxy = browser.GetProxyNode(cine), browser.GetProxyNode(labels)
    before, shown = node_ids(mrml_scene), array(sax)
    items = [(s.GetNumberOfDataNodes(), s.GetMTime()) for s in (cine, labels)]
    job, reports = run_as_the_panel(module, mrml_scene, sax, label_proxy)
    if when == "within frame 2":
        poll_until(job, lambda: len(job._done) == 1)
        assert job.job.running
        done = 1
    else:
        poll_until(job, lambda: len(job._done) == 2)
        deadline = time.monotonic() + 300
        while not job.job.child.finished:  # the last child exits; the timer has not ticked yet
            assert time.monotonic() < deadline
            time.sleep(0.1)
        done = 2
    child = job.job
    job.cancel()
    assert job.result is None and not job.running and not child.folder.exists()
    assert reports[-1] == (None, f"cancelled after {done} of 3 frames: no sequence was added")
    with pytest.raises(InputError, match=rf"^frame {done + 1} of 3: the shape reconstruction was cancelled$"):
        job.poll()  # a tick already queued when Cancel was pressed
    assert node_ids(mrml_scene) == before
    assert mrml_scene.GetNodesByClass("vtkMRMLSequenceNode").GetNumberOfItems() == 2
    assert [(s.GetNumberOfDataNodes(), s.GetMTime()) for s in (cine, labels)] == items
    assert browser.GetSelectedItemNumber() == 2 and browser.GetNumberOfSynchronizedSequenceNodes() == 1
    np.testing.assert_array_equal(array(sax), shown)
