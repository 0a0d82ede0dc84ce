"""Reconstruction: SAX cine stack -> 3D image and label volume, checked on LAX planes.

Thin Slicer module: the widget binds the .ui to a parameter node; the logic hands the work to
``CardiacDiffusionLib.slicer_adapter.reconstruction.ReconstructionJob``, which exports the inputs,
runs ``PythonSlicer -m CardiacDiffusionLib.cli.main reconstruct`` as a child process and loads the
results as new nodes. Everything without Qt lives in the Lib and is tested there with slicer-core.
"""

import importlib.util
import logging
from typing import Annotated, Optional, Union

import qt
import slicer
import vtk
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from CardiacDiffusionLib.slicer_adapter import cine, dependencies, mrml
from CardiacDiffusionLib.slicer_adapter.cine import FramesJob, FramesResult
from CardiacDiffusionLib.slicer_adapter.job import LABEL_NUMBERINGS
from CardiacDiffusionLib.slicer_adapter.reconstruction import DEVICES, METHODS, ReconstructionJob

LabelNode = Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]


#
# Reconstruction
#
class Reconstruction(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Cardiac SAX Reconstruction")
        self.parent.categories = ["Cardiac"]
        self.parent.dependencies = []
        self.parent.contributors = ["CardiacDiffusion developers"]
        self.parent.helpText = _(
            "Reconstructs a short-axis (SAX) cine stack into a 3D image and label volume at a chosen "
            "through-plane spacing, keeping the stack's geometry, and checks the labels against long-axis "
            "(LAX) label planes with a Dice table. Methods: <b>dmcvr</b> (diffusion model, needs the PyTorch "
            "extension), <b>shape</b> (signed-distance shape interpolation), <b>linear</b> and <b>nearest</b>. "
            "Labels: 1 LV cavity, 2 LV myocardium, 3 RV cavity (labelmaps in ACDC numbering: set Label numbering "
            "to acdc). A SAX volume that a loaded cine shows (its sequence browser's proxy) is read at the shown "
            "frame; <b>All cine frames</b> reconstructs every frame into new sequences that join the cine's browser. "
            "The work runs in a background process: "
            "Slicer stays responsive and Cancel stops it. "
            'See <a href="https://github.com/CardiacDiffusion/SlicerCardiacDiffusion">the project page</a>.'
        )
        self.parent.acknowledgementText = _(
            "The dmcvr method follows DMCVR: X. He et al., \"DMCVR: Morphology-Guided Diffusion Model for 3D "
            "Cardiac Volume Reconstruction\", MICCAI 2023 (code: github.com/hexiaoxiao-cs/DMCVR)."
        )


#
# ReconstructionParameterNode
#
@parameterNodeWrapper
class ReconstructionParameterNode:
    """Inputs, settings and optional outputs of one reconstruction (saved with the scene)."""

    saxVolume: vtkMRMLScalarVolumeNode
    allFrames: bool = False  # a cine's proxy as SAX volume: every frame into new sequences (cine.panel_run_options)
    saxLabels: LabelNode
    laxLabels1: LabelNode
    laxLabels2: LabelNode
    laxLabels3: LabelNode
    method: Annotated[str, Choice(list(METHODS))] = "shape"
    spacing: Annotated[float, WithinRange(0.1, 20.0)] = 1.0
    steps: Annotated[int, WithinRange(0, 1000)] = 0
    shapePrior: Annotated[float, WithinRange(-0.05, 0.95)] = -0.05  # below 0: the library's default
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    model: str = ""  # dmcvr: a registered model name or a .safetensors file; empty: the shipped one
    labelNumbering: Annotated[str, Choice(list(LABEL_NUMBERINGS))] = "project"
    outputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode


#
# ReconstructionWidget
#
class ReconstructionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._timer = None
        self._outputTips = []  # (output selector, its .ui tooltip)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/Reconstruction.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ReconstructionLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.modelBrowseButton.connect("clicked(bool)", self.onBrowseModel)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self._outputTips = [(w, w.toolTip) for w in (self.ui.outputVolumeSelector, self.ui.outputSegmentationSelector)]
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onTimer)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.onCancelButton()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.onCancelButton()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.saxVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.saxVolume = first

    def setParameterNode(self, inputParameterNode: Optional[ReconstructionParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def onBrowseModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Choose a DMCVR model"), "", "Model (*.safetensors)")
        if path:
            self._parameterNode.model = path

    def _updateButtons(self, caller=None, event=None) -> None:
        running = self._job is not None
        ready = bool(self._parameterNode and self._parameterNode.saxVolume)
        self.ui.applyButton.enabled = ready and not running
        self.ui.applyButton.toolTip = _("Run the reconstruction") if ready else _("Select a SAX volume")
        self.ui.cancelButton.enabled = running
        # "All cine frames": only for a cine's proxy node; then the output selectors do not apply (new sequences)
        offer = cine.all_frames_offer(self._parameterNode.saxVolume if self._parameterNode else None)
        self.ui.allFramesCheckBox.enabled = offer.enabled
        self.ui.allFramesCheckBox.toolTip = offer.tooltip
        several = offer.enabled and self._parameterNode.allFrames
        for selector, tip in self._outputTips:
            selector.enabled = not several
            selector.toolTip = cine.OUTPUTS_NOTE if several else tip

    def onApplyButton(self) -> None:
        p = self._parameterNode
        self.ui.logTextEdit.clear()
        self.ui.progressBar.value = 0
        with slicer.util.tryWithErrorDisplay(_("Could not start the reconstruction."), waitCursor=True):
            if not self.logic.ensureDependencies():  # first use: offer to install what is missing
                return
            device = p.device
            if p.method == "dmcvr":
                device, note = dependencies.check_device(p.device, "the dmcvr method")
                if note:  # no CUDA: say so clearly and run on the CPU
                    self.ui.logTextEdit.appendPlainText(note)
                    slicer.util.showStatusMessage(note, 15000)
                    logging.warning(note)
            lax = [p.laxLabels1, p.laxLabels2, p.laxLabels3]
            # frames="all" (new sequences, no output nodes) or the shown frame; refused here in the panel's words
            chosen = cine.panel_run_options(p.allFrames, p.saxVolume, p.saxLabels, lax, p.outputVolume, p.outputSegmentation)
            self._job = self.logic.run(
                p.saxVolume, p.saxLabels, lax, method=p.method, spacing=p.spacing, steps=p.steps or None,
                device=device, wait=False, shape_prior=p.shapePrior if p.shapePrior >= 0 else None,
                progress_callback=self.onProgress, label_numbering=p.labelNumbering, model=p.model or None, **chosen,
            )  # fmt: skip
            self._timer.start()
        self._updateButtons()

    def onTimer(self) -> None:
        job = self._job
        try:
            done = job.poll()
        except Exception as error:
            self._stop()
            slicer.util.errorDisplay(_("Reconstruction failed: {error}").format(error=error))
            return
        if done:
            self._stop()
            self.logic.showResult(job.result)
            if isinstance(job.result, FramesResult):  # new sequences in the cine's browser; the outputs stay as set
                for line in cine.frames_summary(job.result):
                    self.ui.logTextEdit.appendPlainText(line)
                return
            for frame in job.result.frames:  # a cine's proxy node: the frame its browser showed
                self.ui.logTextEdit.appendPlainText(_("frame used: {frame}").format(frame=frame))
            for line in job.result.summary:  # per LAX plane: the method's mean Dice beside the best baseline's
                self.ui.logTextEdit.appendPlainText(line)
            for warning in job.result.warnings:  # a result that may be wrong says so where it is seen
                self.ui.logTextEdit.appendPlainText(_("warning: {warning}").format(warning=warning))
            if job.result.warnings:
                slicer.util.showStatusMessage(
                    _("Reconstruction done with {n} warning(s): see the log").format(n=len(job.result.warnings)), 15000
                )
            # the output fields stay as the user set them: a run with another method then makes its own nodes
            # (filled into the previous result, "SAX shape" would hold dmcvr's volume and the shape result be lost)

    def onCancelButton(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self._stop()

    def _stop(self) -> None:
        if self._timer:
            self._timer.stop()
        self._job = None
        self._updateButtons()

    def onProgress(self, fraction, text: str) -> None:
        if fraction is not None:
            self.ui.progressBar.value = int(round(100 * fraction))
        if text:
            self.ui.logTextEdit.appendPlainText(text)


#
# ReconstructionLogic
#
class ReconstructionLogic(ScriptedLoadableModuleLogic):
    """Usable without the widget, e.g. from the Python console or ``Slicer --no-main-window``."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return ReconstructionParameterNode(super().getParameterNode())

    def run(
        self, sax_volume, sax_labels=None, lax_label_nodes=(), method="shape", spacing=1.0, steps=None,
        device="auto", wait=True, progress_callback=None, output_volume=None, output_segmentation=None,
        shape_prior=None, label_numbering="project", model=None, frames=None, roughness_guard=None, baselines=True,
    ):  # fmt: skip
        """Reconstruct ``sax_volume`` (a cine's proxy node: the frame its browser shows, said in ``.frames``).

        ``wait=True`` blocks and returns a ``ReconstructionResult`` (``.volume``, ``.segmentation``,
        ``.table``, ``.lax_dice``, ``.baselines``, ``.summary``, ``.warnings``: what to check in the input or the
        result); ``wait=False`` returns the running ``ReconstructionJob`` (call ``poll()`` from a timer, ``cancel()``
        to stop it).
        ``progress_callback(fraction, text)``.
        ``shape_prior`` (dmcvr, 0 to < 1): weight of shape-based interpolation in the generated slices' labels
        (None: the library default, 0.4; 0: the network's labels alone). ``label_numbering``: of labelmap
        volume nodes, "project" (1 LV cavity, 2 LV myocardium, 3 RV cavity) or "acdc" (1 RV, 2 MYO, 3 LV);
        segmentations are read by segment name. ``model`` (dmcvr): a registered model name or a .safetensors
        file (None: the shipped one). ``roughness_guard`` (dmcvr, a ratio > 0; inf or "off": off; None: the library
        default, 1.2; not on the panel): a generated crop rougher than that times its acquired neighbours is decoded
        again from the nearer one's code (``--roughness-guard``). ``baselines`` (with LAX labels and SAX labels): the
        classical methods (nearest, linear, shape) are checked on the same planes too: their rows join the table
        ("<plane> · <method>", the chosen method first) and ``.summary`` says per plane whether the method is ahead
        of the best of them (False: the method's rows alone, as ``lax_dice``). ``frames`` ("all" or 0-based item
        numbers of a cine whose proxy node is ``sax_volume``; ``sax_labels`` then the proxy of a label sequence in
        its browser, or None; no LAX labels): each frame is reconstructed into new volume sequences that join the
        cine's browser; returns a ``FramesResult`` (``.volumes``, ``.labels``, ``.frames``, ``.warnings``) or the running ``FramesJob``.
        """
        if frames is not None:
            job = FramesJob(
                slicer.mrmlScene, sax_volume, frames, sax_labels, method=method, spacing=spacing, steps=steps,
                device=device, shape_prior=shape_prior, label_numbering=label_numbering, model=model,
                roughness_guard=roughness_guard, lax_label_nodes=[n for n in lax_label_nodes if n is not None],
                output_volume=output_volume, output_segmentation=output_segmentation,
            )  # fmt: skip
        else:
            job = ReconstructionJob(
                slicer.mrmlScene, sax_volume, sax_labels, lax_label_nodes, method=method, spacing=spacing,
                steps=steps, device=device, output_volume=output_volume, output_segmentation=output_segmentation,
                shape_prior=shape_prior, label_numbering=label_numbering, model=model, roughness_guard=roughness_guard,
                baselines=baselines,
            )  # fmt: skip
        job.start(progress_callback or self._log)
        if not wait:
            return job
        try:
            return job.wait()
        except BaseException:
            job.cancel()
            raise

    @staticmethod
    def _log(fraction, text: str) -> None:
        if text:
            logging.info(text if fraction is None else f"{100 * fraction:3.0f}% {text}")

    def ensureDependencies(self, ask: bool = True) -> bool:
        """First use: torch through the PyTorch extension's installer when it is there, then the missing Python
        packages after the user's OK (never numpy, SimpleITK, vtk). False when the user declined."""
        if not dependencies.offer_torch(ask):
            return False
        confirm = slicer.util.confirmOkCancelDisplay if ask else (lambda message: True)
        return dependencies.ensure(dependencies.slicer_pip_install, confirm)

    @staticmethod
    def showResult(result) -> None:
        """Show the reconstructed volume in the slice views and the segmentation in 3D (several frames: the new
        sequences' proxies, which follow the cine's browser)."""
        if isinstance(result, FramesResult):
            labels = {"label": result.labels_proxy} if result.labels_proxy is not None else {}
            slicer.util.setSliceViewerLayers(background=result.volume_proxy, fit=True, **labels)
            return
        slicer.util.setSliceViewerLayers(background=result.volume, fit=True)
        if result.segmentation is not None:
            result.segmentation.GetDisplayNode().SetVisibility3D(True)
        if result.table is not None:
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(result.table.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()


#
# ReconstructionTest
#
class ReconstructionTest(ScriptedLoadableModuleTest):
    """Self test on an MR phantom subject made here (no download): method 'shape' in a child process."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_shape_on_phantom()

    @staticmethod
    def _state(node) -> tuple:
        """What 'unchanged' means for an input volume: ID, name, modification times, geometry, voxels."""
        import hashlib

        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        voxels = hashlib.sha1(slicer.util.arrayFromVolume(node).tobytes()).hexdigest()
        geometry = tuple(matrix.GetElement(r, c) for r in range(4) for c in range(4))
        return node.GetID(), node.GetName(), node.GetMTime(), node.GetImageData().GetMTime(), geometry, voxels

    def test_shape_on_phantom(self):
        if importlib.util.find_spec("torch") is None:  # the Lib's command line imports torch
            self.skipTest("torch is not installed: install it in the PyTorch Utils module")
        import tempfile

        import numpy as np

        from CardiacDiffusionLib.io.volumes import read_labels, read_stack
        from CardiacDiffusionLib.phantoms.scanner import LAX_VIEWS, make_subject, write_subject
        from CardiacDiffusionLib.reconstruction.lax_check import lax_dice_table
        from CardiacDiffusionLib.reconstruction.volume import reconstruct

        scene = slicer.mrmlScene
        with tempfile.TemporaryDirectory(prefix="CardiacDiffusion-selftest-") as folder:
            self.delayDisplay("Scanning an MR phantom subject (SAX stack, 2ch/3ch/4ch LAX) and loading it")
            files = write_subject(make_subject(seed=0, matrix=64, pixel_mm=2.5), folder, dicom=False)
            sax = mrml.load_volume(scene, files["sax_image"], "SAX")
            saxLabels = mrml.load_volume(scene, files["sax_labels"], "SAX labels", labelmap=True)
            lax = [mrml.load_volume(scene, files[f"lax_{v}_labels"], v, labelmap=True) for v in LAX_VIEWS]
            # the Lib on the same files, in this process: what the child process must reproduce
            stack = read_stack(files["sax_image"], files["sax_labels"])
            laxLabels = {v: read_labels(files[f"lax_{v}_labels"]) for v in LAX_VIEWS}
            expected = lax_dice_table(reconstruct(stack, "shape", 2.0).labels, laxLabels)
            nearest = lax_dice_table(reconstruct(stack, "nearest", 2.0).labels, laxLabels)
        inputs = [sax, saxLabels, *lax]
        before = [self._state(node) for node in inputs]
        nodesBefore = scene.GetNumberOfNodes()

        self.delayDisplay("Reconstructing (shape) in a child process")
        result = ReconstructionLogic().run(sax, saxLabels, lax, method="shape", spacing=2.0, wait=True)

        volume, saxImage = mrml.image_from_volume_node(result.volume), mrml.image_from_volume_node(sax)
        np.testing.assert_allclose(volume.GetOrigin(), saxImage.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(volume.GetDirection(), saxImage.GetDirection(), atol=1e-6)
        np.testing.assert_allclose(volume.GetSpacing(), saxImage.GetSpacing()[:2] + (2.0,), atol=1e-5)
        segmentation = result.segmentation.GetSegmentation()
        names = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
        self.assertEqual(names, {"LV cavity", "LV myocardium", "RV cavity"})
        self.assertEqual(set(result.lax_dice), set(LAX_VIEWS))
        for view, row in result.lax_dice.items():
            for label, dice in row.items():
                if expected[view][label] is None:  # e.g. no RV in the 2ch view
                    self.assertIsNone(dice, f"{label} on {view}")
                    continue
                self.assertGreater(dice, 0.8, f"{label} Dice on {view}")
                self.assertAlmostEqual(dice, expected[view][label], delta=0.01, msg=f"{label} on {view}")
        # the classical baselines beside it: rows "<view> · <method>", shape first; linear's labels are nearest's
        self.assertEqual(list(mrml.dict_from_table(result.table)), [f"{v} · {m}" for v in LAX_VIEWS
                                                                     for m in ("shape", "nearest", "linear")])
        self.assertEqual(result.baselines["linear"], result.baselines["nearest"])
        for view, row in nearest.items():
            for label, dice in row.items():
                self.assertAlmostEqual(result.baselines["nearest"][view][label], dice, delta=0.01, msg=f"{label} on {view}")
        self.assertEqual([line.split(":")[0] for line in result.summary[:3]], list(LAX_VIEWS))
        # inputs unchanged; the results are new nodes
        self.assertEqual([self._state(node) for node in inputs], before)
        for output in (result.volume, result.segmentation, result.table):
            self.assertNotIn(output.GetID(), [node.GetID() for node in inputs])
        self.assertGreater(scene.GetNumberOfNodes(), nodesBefore)
        self.delayDisplay("Test passed")
