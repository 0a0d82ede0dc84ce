"""A SAX cine in Slicer (a sequence of volumes, its browser and the proxy node showing one frame) as the
modules' input, on real slicer-core nodes: the frame the browser shows is read and said, outputs are plain
nodes that keep it in their attributes, no sequence item changes, and several frames become output sequences
that follow the cine's browser."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import SimpleITK as sitk

from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.slicer_adapter.process import ProcessFailed
from CardiacDiffusionLib.geometry.stack import SliceStack
from CardiacDiffusionLib.reconstruction.volume import reconstruct

pytestmark = pytest.mark.mrml

TIMES = ("0", "80", "160", "240", "320")  # trigger times (ms), one per frame
LABELLED = (0, 2)  # frames with SAX labels (ED and ES)
SPACING = 2.0


@pytest.fixture(scope="module")
def frames() -> list[tuple[sitk.Image, sitk.Image | None]]:
    """Five frames of an MR phantom's SAX stack (ED, ES and blends, all different; labels on ED and ES)."""
    from CardiacDiffusionLib.phantoms.scanner import make_subject

    ed, es = (make_subject(seed=3, phase=p, matrix=48, pixel_mm=3.0).sax for p in ("ED", "ES"))
    image_ed, image_es = ed.to_image(), es.to_image()
    a, b = sitk.GetArrayFromImage(image_ed), sitk.GetArrayFromImage(image_es)
    out = []
    for k, array in enumerate((a, 0.5 * (a + b), b, 0.55 * (a + b), 0.9 * a)):
        image = sitk.GetImageFromArray(array.astype(np.float32))
        image.CopyInformation(image_ed)
        labels = {0: ed, 2: es}.get(k)
        out.append((image, None if labels is None else labels.to_image(labels=True)))
    return out


def make_cine(scene, frames, labels: bool = True):
    """Sequence 'cine' (time, ms) of the frames' volumes, a label sequence of the labelled frames, their browser."""
    import slicer

    from CardiacDiffusionLib.slicer_adapter import mrml

    cine = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine")
    cine.SetIndexName("time")
    cine.SetIndexUnit("ms")
    label_sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine labels") if labels else None
    if labels:
        label_sequence.SetIndexName("time")
        label_sequence.SetIndexUnit("ms")
    for k, (image, label_image) in enumerate(frames):
        cine.SetDataNodeAtValue(mrml.volume_node_from_image(None, image, node=slicer.vtkMRMLScalarVolumeNode()), TIMES[k])
        if labels and label_image is not None:
            node = mrml.volume_node_from_image(None, label_image, node=slicer.vtkMRMLLabelMapVolumeNode())
            label_sequence.SetDataNodeAtValue(node, TIMES[k])
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "cine browser")
    browser.SetAndObserveMasterSequenceNodeID(cine.GetID())
    if labels:
        browser.AddSynchronizedSequenceNodeID(label_sequence.GetID())
    return cine, label_sequence, browser


def select(browser, item: int) -> None:
    browser.SetSelectedItemNumber(item)
    browser.GetScene().logics[2].UpdateProxyNodesFromSequences(browser)  # Slicer's logic does this by itself


def items_state(*sequences) -> list[tuple]:
    """Every item of the sequences: index value, class, geometry and a hash of its voxels' bytes."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    state = []
    for sequence in sequences:
        for i in range(sequence.GetNumberOfDataNodes()):
            node = sequence.GetNthDataNode(i)
            matrix = vtk.vtkMatrix4x4()
            node.GetIJKToRASMatrix(matrix)
            voxels = vtk_to_numpy(node.GetImageData().GetPointData().GetScalars())
            state.append((sequence.GetNthIndexValue(i), node.GetClassName(), str(voxels.dtype),
                          tuple(matrix.GetElement(r, c) for r in range(4) for c in range(4)),
                          hashlib.sha256(voxels.tobytes()).hexdigest()))  # fmt: skip
    return state


def expected(frames, k: int, labels: bool = False):
    image, label_image = frames[k]
    return reconstruct(SliceStack.from_image(image, label_image if labels else None), "shape", SPACING)


def array(node) -> np.ndarray:
    from CardiacDiffusionLib.slicer_adapter import mrml

    return sitk.GetArrayFromImage(mrml.image_from_volume_node(node))


def test_frames_differ(frames):
    """The test's frames are distinct: reading the wrong one cannot pass."""
    arrays = [sitk.GetArrayFromImage(image) for image, _ in frames]
    for i in range(len(arrays)):
        for j in range(i + 1, len(arrays)):
            assert np.abs(arrays[i] - arrays[j]).mean() > 0.01, (i, j)


def test_proxy_input_reads_the_selected_frame_and_says_so(mrml_scene, frames):
    from CardiacDiffusionLib.slicer_adapter import sequences
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob

    cine, labels, browser = make_cine(mrml_scene, frames)
    select(browser, 3)
    proxy = browser.GetProxyNode(cine)
    before = items_state(cine, labels)

    result = ReconstructionJob(mrml_scene, proxy, method="shape", spacing=SPACING).start().wait(timeout=300)

    want = expected(frames, 3).image
    np.testing.assert_allclose(array(result.volume), sitk.GetArrayFromImage(want), atol=1e-4)
    assert not np.allclose(array(result.volume), sitk.GetArrayFromImage(expected(frames, 1).image), atol=1e-2)
    said = "frame 4 of 5 (time 240 ms) of sequence 'cine'"
    assert result.frames == [f"node 'cine': {said}"]
    assert any(said in line and "browser 'cine browser'" in line for line in result.log)
    attributes = {n: result.volume.GetAttribute(n) for n in sequences.SOURCE_ATTRIBUTES}
    assert attributes == {"CardiacDiffusion.SourceFrame": said, "CardiacDiffusion.SourceSequence": "cine",
                          "CardiacDiffusion.SourceItemNumber": "3", "CardiacDiffusion.SourceIndexValue": "240",
                          "CardiacDiffusion.SourceIndexUnit": "ms"}  # fmt: skip
    assert result.volume.GetDescription() == f"made from {said}"
    # the output is a plain node; moving the browser changes the proxy, not the result; no item changed
    assert sequences.browser_of(result.volume) is None
    kept = array(result.volume)
    select(browser, 1)
    np.testing.assert_array_equal(array(result.volume), kept)
    np.testing.assert_array_equal(array(proxy), sitk.GetArrayFromImage(frames[1][0]))
    assert items_state(cine, labels) == before and browser.GetSelectedItemNumber() == 1


def test_labels_of_the_same_frame_follow_the_browser(mrml_scene, frames):
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob

    cine, labels, browser = make_cine(mrml_scene, frames)
    select(browser, 2)  # ES: image and labels
    proxy, label_proxy = browser.GetProxyNode(cine), browser.GetProxyNode(labels)
    before = items_state(cine, labels)
    result = ReconstructionJob(mrml_scene, proxy, label_proxy, method="shape", spacing=SPACING).start().wait(timeout=300)
    want = expected(frames, 2, labels=True)
    np.testing.assert_allclose(array(result.volume), sitk.GetArrayFromImage(want.image), atol=1e-4)
    out_labels = mrml.labels_from_segmentation(result.segmentation, mrml.image_from_volume_node(result.volume))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out_labels), sitk.GetArrayFromImage(want.labels))
    assert result.frames == ["node 'cine': frame 3 of 5 (time 160 ms) of sequence 'cine'",
                             "node 'cine labels': frame 2 of 2 (time 160 ms) of sequence 'cine labels'"]  # fmt: skip
    assert result.warnings == []
    assert result.segmentation.GetAttribute("CardiacDiffusion.SourceItemNumber") == "2"
    assert items_state(cine, labels) == before

    # plain labels beside a cine frame: used, with a warning naming the frame
    plain = mrml.volume_node_from_image(mrml_scene, frames[2][1], "ES labels", labelmap=True)
    result = ReconstructionJob(mrml_scene, proxy, plain, method="shape", spacing=SPACING).start().wait(timeout=300)
    assert result.warnings == ["SAX labels 'ES labels' do not follow sequence browser 'cine browser' of the SAX "
                               "volume: check that they were drawn on the frame used, frame 3 of 5 (time 160 ms) "
                               "of sequence 'cine'"]  # fmt: skip


def test_labels_missing_at_the_frame_and_proxy_outputs_are_refused(mrml_scene, frames):
    from CardiacDiffusionLib.slicer_adapter import sequences
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob

    cine, labels, browser = make_cine(mrml_scene, frames)
    select(browser, 3)  # no labels at 240 ms: the label proxy still shows those of 160 ms
    proxy, label_proxy = browser.GetProxyNode(cine), browser.GetProxyNode(labels)
    assert sequences.proxy_frame(label_proxy).exact is False
    before, nodes = items_state(cine, labels), mrml_scene.GetNumberOfNodes()
    job = ReconstructionJob(mrml_scene, proxy, label_proxy, method="shape")
    with pytest.raises(InputError, match=r"node 'cine labels': its sequence 'cine labels' has no item at time 240 ms"
                                         r".*shows item 2 of 2 instead"):  # fmt: skip
        job.start()
    assert job.folder is not None and not job.folder.exists()
    # a proxy as output: refused before any work, with 'save changes' on too (then writing would change the item)
    browser.SetSaveChanges(cine, True)
    for key, what in (("output_volume", "output volume"), ("output_segmentation", "output segmentation")):
        node = proxy if key == "output_volume" else mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
        if key == "output_segmentation":  # a segmentation sequence's proxy
            seg_sequence = mrml_scene.AddNewNodeByClass("vtkMRMLSequenceNode", "segs")
            seg_sequence.SetDataNodeAtValue(node, "0")
            browser.AddSynchronizedSequenceNodeID(seg_sequence.GetID())
            select(browser, 3)
            node = browser.GetProxyNode(seg_sequence)
            nodes = mrml_scene.GetNumberOfNodes()
        with pytest.raises(InputError, match=f"{what} '.*': is the proxy node of sequence browser 'cine browser'"):
            ReconstructionJob(mrml_scene, proxy, method="shape", **{key: node})
    assert items_state(cine, labels) == before and mrml_scene.GetNumberOfNodes() == nodes


def test_record_source_clears_a_previous_frame(mrml_scene):
    from CardiacDiffusionLib.slicer_adapter import sequences

    node = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "out")
    frame = sequences.Frame("cine", "b", "cine", 0, 25, "time", "0", "ms")
    sequences.record_source(node, frame)
    assert node.GetAttribute("CardiacDiffusion.SourceFrame") == "frame 1 of 25 (time 0 ms) of sequence 'cine'"
    sequences.record_source(node, None)  # the output reused for a plain volume
    assert all(node.GetAttribute(n) is None for n in sequences.SOURCE_ATTRIBUTES) and node.GetDescription() == ""


def test_several_frames_become_sequences_following_the_browser(mrml_scene, frames):
    from CardiacDiffusionLib.slicer_adapter import sequences
    from CardiacDiffusionLib.slicer_adapter.cine import FramesJob

    cine, labels, browser = make_cine(mrml_scene, frames)
    select(browser, 1)
    proxy, label_proxy = browser.GetProxyNode(cine), browser.GetProxyNode(labels)
    before, shown = items_state(cine, labels), array(proxy)
    reports = []
    job = FramesJob(mrml_scene, proxy, [0, 2, 3], label_proxy, method="shape", spacing=SPACING)
    result = job.start(lambda f, t: reports.append((f, t))).wait(timeout=300)

    assert [result.volumes.GetNthIndexValue(i) for i in range(3)] == ["0", "160", "240"]
    assert [result.labels.GetNthIndexValue(i) for i in range(2)] == ["0", "160"]  # frames with SAX labels only
    assert (result.volumes.GetIndexName(), result.volumes.GetIndexUnit()) == ("time", "ms")
    for i, k in enumerate((0, 2, 3)):
        want = expected(frames, k, labels=k in LABELLED)
        item = result.volumes.GetNthDataNode(i)
        np.testing.assert_allclose(array(item), sitk.GetArrayFromImage(want.image), atol=1e-4)
        assert item.GetAttribute("CardiacDiffusion.SourceItemNumber") == str(k)
        if k in LABELLED:
            np.testing.assert_array_equal(array(result.labels.GetNthDataNode(LABELLED.index(k))),
                                          sitk.GetArrayFromImage(want.labels))  # fmt: skip
    assert result.frames[2] == "frame 4 of 5 (time 240 ms) of sequence 'cine', without SAX labels"
    # the inputs are as they were: items, the browser's frame, the proxy's voxels
    assert items_state(cine, labels) == before and browser.GetSelectedItemNumber() == 1
    np.testing.assert_array_equal(array(proxy), shown)
    # the outputs follow the cine's browser
    assert browser.IsSynchronizedSequenceNode(result.volumes) and not browser.GetSaveChanges(result.volumes)
    select(browser, 3)
    np.testing.assert_allclose(array(result.volume_proxy), sitk.GetArrayFromImage(expected(frames, 3).image), atol=1e-4)
    select(browser, 4)  # not reconstructed: the output proxies are empty, not the previous frame's result
    for node in (result.volume_proxy, result.labels_proxy):
        assert node.GetImageData() is None or node.GetImageData().GetNumberOfPoints() == 0
    assert sequences.browser_of(result.volume_proxy) is browser
    fractions = [f for f, _ in reports if f is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and any("frame 3:" in t for _, t in reports)


def test_several_frames_refusals_and_cancel(mrml_scene, frames):
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.cine import FramesJob

    cine, labels, browser = make_cine(mrml_scene, frames)
    select(browser, 0)
    proxy = browser.GetProxyNode(cine)
    plain = mrml.volume_node_from_image(mrml_scene, frames[0][0], "ED")
    with pytest.raises(InputError, match="SAX volume: 'ED' is a plain volume; several frames are read from a cine"):
        FramesJob(mrml_scene, plain, "all")
    with pytest.raises(InputError, match=r"frames \[5\]: sequence 'cine' has items 0-4"):
        FramesJob(mrml_scene, proxy, [0, 5])
    with pytest.raises(InputError, match="SAX labels 'ED': for several frames give the proxy node of a label sequence"):
        FramesJob(mrml_scene, proxy, "all", plain)
    with pytest.raises(InputError, match="method 'x' is unknown"):
        FramesJob(mrml_scene, proxy, "all", method="x")
    nodes, before = mrml_scene.GetNumberOfNodes(), items_state(cine, labels)
    job = FramesJob(mrml_scene, proxy, [3, 4], method="dmcvr", model="no-such-dmcvr-model").start()
    with pytest.raises(ProcessFailed, match="^frame 4 of 5: .*model 'no-such-dmcvr-model': not registered"):
        job.wait(timeout=300)
    assert mrml_scene.GetNumberOfNodes() == nodes and items_state(cine, labels) == before
    job = FramesJob(mrml_scene, proxy, "all", method="shape").start()
    job.cancel()
    assert job.result is None and not job.running
    assert mrml_scene.GetNumberOfNodes() == nodes and items_state(cine, labels) == before


def test_activation_reads_the_selected_label_frame(mrml_scene, tmp_path):
    """ActivationMap: SAX labels that are a cine's proxy are read at the browser's frame, said and recorded."""
    import shutil

    import slicer

    from CardiacDiffusionLib.activation.sectors import lv_frame
    from CardiacDiffusionLib.activation.tos import write_tos_csv
    from CardiacDiffusionLib.phantoms.activation import ActivationPhantom
    from CardiacDiffusionLib.phantoms.mr import MRPhantom
    from CardiacDiffusionLib.phantoms.scanner import acquire_sax
    from CardiacDiffusionLib.slicer_adapter import mrml, sequences
    from CardiacDiffusionLib.slicer_adapter.activation import ActivationJob

    ed, es = (acquire_sax(MRPhantom(0, p), noise_sigma=0.0, sub_planes=1, matrix=64, pixel_mm=3.0) for p in ("ED", "ES"))
    frame = lv_frame(ed)
    tos = np.maximum(ActivationPhantom(3, "lbbb").sector_tos(len(frame.slices), 18), 17.0)
    csv = write_tos_csv(tmp_path / "tos.csv", dict(zip(frame.slices.tolist(), tos)))
    cine = mrml_scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine labels")
    cine.SetIndexName("time")
    cine.SetIndexUnit("ms")
    for k, stack in enumerate((es, es, ed)):
        node = mrml.volume_node_from_image(None, stack.to_image(labels=True), node=slicer.vtkMRMLLabelMapVolumeNode())
        cine.SetDataNodeAtValue(node, TIMES[k])
    browser = mrml_scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "cine browser")
    browser.SetAndObserveMasterSequenceNodeID(cine.GetID())
    select(browser, 2)
    before = items_state(cine)
    job = ActivationJob(mrml_scene, browser.GetProxyNode(cine), tos_file=str(csv), keep_files=True)
    try:
        result = job.start().wait(timeout=300)
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(job.folder / "sax_labels.nrrd")))
    finally:
        shutil.rmtree(job.folder, ignore_errors=True)
    np.testing.assert_array_equal(written, sitk.GetArrayFromImage(ed.to_image(labels=True)))  # frame 3, not 1 or 2
    assert result.frames == ["node 'cine labels': frame 3 of 3 (time 160 ms) of sequence 'cine labels'"]
    for node in (result.model, result.table, result.bullseye, result.sector_points):
        assert node.GetAttribute("CardiacDiffusion.SourceIndexValue") == "160"
        assert sequences.browser_of(node) is None
    assert items_state(cine) == before and browser.GetSelectedItemNumber() == 2


def test_reconstruction_module_logic_on_a_cine(mrml_scene, frames, monkeypatch):
    """The module's Logic (real code, Qt stubbed): the shown frame by default, a list of frames on request."""
    from helpers import load_panel

    module = load_panel("Reconstruction", monkeypatch, mrml_scene)
    cine, labels, browser = make_cine(mrml_scene, frames)
    select(browser, 4)
    proxy = browser.GetProxyNode(cine)
    before = items_state(cine, labels)
    result = module.ReconstructionLogic().run(proxy, method="shape", spacing=SPACING)
    np.testing.assert_allclose(array(result.volume), sitk.GetArrayFromImage(expected(frames, 4).image), atol=1e-4)
    assert result.frames == ["node 'cine': frame 5 of 5 (time 320 ms) of sequence 'cine'"]
    result = module.ReconstructionLogic().run(proxy, browser.GetProxyNode(labels), [None] * 3, method="shape",
                                              spacing=SPACING, frames=[2, 1])  # fmt: skip
    assert [result.volumes.GetNthIndexValue(i) for i in range(2)] == ["80", "160"]
    assert result.labels.GetNumberOfDataNodes() == 1 and result.labels.GetNthIndexValue(0) == "160"
    assert items_state(cine, labels) == before and browser.GetSelectedItemNumber() == 4


# ---- LAX labels beside a SAX cine frame; a SAX proxy under a transform ------------------------------------------
@pytest.fixture(scope="module")
def lax() -> dict[str, sitk.Image]:
    """4ch LAX labels of the frames' heart at ED (frame 0, 0 ms) and ES (frame 2, 160 ms)."""
    from CardiacDiffusionLib.phantoms.scanner import make_subject

    return {p: make_subject(seed=3, phase=p, matrix=48, pixel_mm=3.0).lax_labels["4ch"] for p in ("ED", "ES")}


def lax_sequence(scene, lax, browser=None):
    """Sequence 'lax labels' (time, ms) of the ED and ES LAX labels, synchronised in ``browser`` or in its own
    browser 'lax browser'; returns (sequence, browser)."""
    import slicer

    from CardiacDiffusionLib.slicer_adapter import mrml

    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "lax labels")
    sequence.SetIndexName("time")
    sequence.SetIndexUnit("ms")
    for time, phase in (("0", "ED"), ("160", "ES")):
        sequence.SetDataNodeAtValue(mrml.volume_node_from_image(None, lax[phase], node=slicer.vtkMRMLLabelMapVolumeNode()), time)
    if browser is None:
        browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "lax browser")
        browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    else:
        browser.AddSynchronizedSequenceNodeID(sequence.GetID())
    return sequence, browser


def test_lax_labels_in_the_cine_browser_are_of_the_sax_frame(mrml_scene, frames, lax):
    """Same browser, so the same time: no warning, the LAX Dice of the matching phase; a LAX sequence with no item
    at the SAX frame is refused before any work."""
    from CardiacDiffusionLib.reconstruction.lax_check import lax_dice_table
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob

    cine, labels, browser = make_cine(mrml_scene, frames)
    sequence, _ = lax_sequence(mrml_scene, lax, browser)
    select(browser, 2)  # ES: image, SAX labels and LAX labels
    proxy, label_proxy, lax_proxy = (browser.GetProxyNode(s) for s in (cine, labels, sequence))
    before = items_state(cine, labels, sequence)
    result = ReconstructionJob(mrml_scene, proxy, label_proxy, [lax_proxy], method="shape",
                               spacing=SPACING).start().wait(timeout=300)  # fmt: skip
    want = lax_dice_table(expected(frames, 2, labels=True).labels, {"ES": lax["ES"]})["ES"]
    assert result.lax_dice == {"lax labels": want} and want["LV"] > 0.85 and want["MYO"] > 0.6
    assert result.warnings == []
    assert result.frames[2] == "node 'lax labels': frame 2 of 2 (time 160 ms) of sequence 'lax labels'"
    select(browser, 3)  # 240 ms: no LAX labels there (the proxy still shows ES's)
    job = ReconstructionJob(mrml_scene, proxy, None, [lax_proxy], method="shape", spacing=SPACING)
    with pytest.raises(InputError, match=r"node 'lax labels': its sequence 'lax labels' has no item at time 240 ms"):
        job.start()
    assert not job.folder.exists() and items_state(cine, labels, sequence) == before


def test_lax_labels_of_another_browser_or_plain_are_said_against_the_sax_frame(mrml_scene, frames, lax):
    """A LAX cine in its own browser may show another phase than the SAX frame: a warning naming both frames (the
    LAX Dice of ED labels on the ES reconstruction is much lower); plain LAX labels: a warning naming the frame."""
    from CardiacDiffusionLib.reconstruction.lax_check import lax_dice_table
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob

    cine, labels, browser = make_cine(mrml_scene, frames)
    sequence, lax_browser = lax_sequence(mrml_scene, lax)
    select(browser, 2)  # SAX at ES, 160 ms
    proxy, label_proxy, lax_proxy = browser.GetProxyNode(cine), browser.GetProxyNode(labels), lax_browser.GetProxyNode(sequence)
    before = items_state(cine, labels, sequence)
    sax_frame = "frame 3 of 5 (time 160 ms) of sequence 'cine' (sequence browser 'cine browser')"
    es_labels = expected(frames, 2, labels=True).labels
    for item, phase in ((0, "ED"), (1, "ES")):
        select(lax_browser, item)
        result = ReconstructionJob(mrml_scene, proxy, label_proxy, [lax_proxy], method="shape",
                                   spacing=SPACING).start().wait(timeout=300)  # fmt: skip
        assert result.warnings[0] == (
            f"LAX labels 'lax labels' are read at frame {item + 1} of 2 (time {('0', '160')[item]} ms) of sequence "
            f"'lax labels' (sequence browser 'lax browser'), the SAX volume at {sax_frame}: two browsers, so the "
            "frames may be of different cardiac phases; check that they match (or put both sequences in one browser)")
        assert result.lax_dice == {"lax labels": lax_dice_table(es_labels, {phase: lax[phase]})[phase]}
        if phase == "ED":  # the mismatch the warning is about: ED LAX labels against the ES reconstruction
            assert result.lax_dice["lax labels"]["MYO"] < 0.7 and len(result.warnings) == 2  # + the agreement check's
            mismatched = result.lax_dice["lax labels"]["MYO"]
        else:
            assert result.lax_dice["lax labels"]["MYO"] > mismatched + 0.1 and len(result.warnings) == 1
    plain = mrml.volume_node_from_image(mrml_scene, lax["ES"], "4ch ES", labelmap=True)
    result = ReconstructionJob(mrml_scene, proxy, label_proxy, [plain], method="shape", spacing=SPACING).start().wait(timeout=300)
    assert result.warnings == ["LAX labels '4ch ES' do not follow sequence browser 'cine browser' of the SAX volume: "
                               "check that they were drawn on the frame used, frame 3 of 5 (time 160 ms) of sequence "
                               "'cine'"]  # fmt: skip
    assert items_state(cine, labels, sequence) == before and lax_browser.GetSelectedItemNumber() == 1


def test_sax_proxy_under_a_transform_is_reconstructed_where_it_is_shown(mrml_scene, frames):
    """A cine's proxy under a parent linear transform (rotation + shift): the result is a plain node at the
    transformed place, with the shown frame's voxels; the transform, the proxy and the items are unchanged."""
    import vtk

    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob

    cine, labels, browser = make_cine(mrml_scene, frames)
    select(browser, 1)
    proxy = browser.GetProxyNode(cine)
    transform = vtk.vtkTransform()
    transform.Translate(30.0, -20.0, 15.0)
    transform.RotateWXYZ(25.0, 0.3, 1.0, 0.2)
    node = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    node.SetMatrixTransformToParent(transform.GetMatrix())
    proxy.SetAndObserveTransformNodeID(node.GetID())
    to_world = mrml._numpy_matrix(transform.GetMatrix())
    before, shown = items_state(cine, labels), array(proxy)

    result = ReconstructionJob(mrml_scene, proxy, method="shape", spacing=SPACING).start().wait(timeout=300)

    want = expected(frames, 1).image
    assert result.volume.GetParentTransformNode() is None  # its own geometry is the world's
    got = mrml._numpy_matrix(mrml._get_ijk_to_ras(result.volume))
    np.testing.assert_allclose(got, to_world @ mrml.ijk_to_ras(want), atol=1e-4)
    np.testing.assert_allclose(array(result.volume), sitk.GetArrayFromImage(want), atol=1e-4)
    # the volume's centre lands where the transformed input's centre is (not where the untransformed one is)
    centre = np.array([*(np.array(want.GetSize()) - 1) / 2.0, 1.0])
    untransformed = mrml.ijk_to_ras(want) @ centre
    np.testing.assert_allclose(got @ centre, to_world @ untransformed, atol=1e-3)
    assert np.linalg.norm((got @ centre - untransformed)[:3]) > 20.0
    assert result.frames == ["node 'cine': frame 2 of 5 (time 80 ms) of sequence 'cine'"]
    assert proxy.GetParentTransformNode() is node and items_state(cine, labels) == before
    np.testing.assert_array_equal(array(proxy), shown)
