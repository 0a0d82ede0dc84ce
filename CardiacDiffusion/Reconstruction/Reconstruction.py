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

from CardiacDiffusionLib.slicer_adapter import mrml
from CardiacDiffusionLib.slicer_adapter.reconstruction import (
    DEVICES,
    METHODS,
    ReconstructionJob,
    missing_packages,
)

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
            "Labels: 1 LV cavity, 2 LV myocardium, 3 RV cavity. The work runs in a background process: "
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
    saxLabels: LabelNode
    laxLabels1: LabelNode
    laxLabels2: LabelNode
    laxLabels3: LabelNode
    method: Annotated[str, Choice(list(METHODS))] = "shape"
    spacing: Annotated[float, WithinRange(0.1, 20.0)] = 1.0
    steps: Annotated[int, WithinRange(0, 1000)] = 0
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
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

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/Reconstruction.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ReconstructionLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
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

    def _updateButtons(self, caller=None, event=None) -> None:
        running = self._job is not None
        ready = bool(self._parameterNode and self._parameterNode.saxVolume)
        self.ui.applyButton.enabled = ready and not running
        self.ui.applyButton.toolTip = _("Run the reconstruction") if ready else _("Select a SAX volume")
        self.ui.cancelButton.enabled = running

    def onApplyButton(self) -> None:
        p = self._parameterNode
        self.ui.logTextEdit.clear()
        self.ui.progressBar.value = 0
        with slicer.util.tryWithErrorDisplay(_("Could not start the reconstruction."), waitCursor=True):
            if not self.logic.ensureDependencies(p.method):
                return
            self._job = self.logic.run(
                p.saxVolume, p.saxLabels, [p.laxLabels1, p.laxLabels2, p.laxLabels3], method=p.method,
                spacing=p.spacing, steps=p.steps or None, device=p.device, wait=False,
                progress_callback=self.onProgress, output_volume=p.outputVolume,
                output_segmentation=p.outputSegmentation,
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
            self._parameterNode.outputVolume = job.result.volume
            if job.result.segmentation is not None:
                self._parameterNode.outputSegmentation = job.result.segmentation

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
    ):  # fmt: skip
        """Reconstruct ``sax_volume``.

        ``wait=True`` blocks and returns a ``ReconstructionResult`` (``.volume``, ``.segmentation``,
        ``.table``, ``.lax_dice``); ``wait=False`` returns the running ``ReconstructionJob`` (call
        ``poll()`` from a timer, ``cancel()`` to stop it). ``progress_callback(fraction, text)``.
        """
        job = ReconstructionJob(
            slicer.mrmlScene, sax_volume, sax_labels, lax_label_nodes, method=method, spacing=spacing,
            steps=steps, device=device, output_volume=output_volume, output_segmentation=output_segmentation,
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

    def ensureDependencies(self, method: str, ask: bool = True) -> bool:
        """Install what ``method`` needs in Slicer's Python (torch via the PyTorch extension)."""
        missing = missing_packages(method)
        if not missing:
            return True
        names = ", ".join(name for name, _requirement in missing)
        if ask and not slicer.util.confirmOkCancelDisplay(
            _("The {method} method needs Python packages that are not installed yet: {names}. "
              "Install them now? This may take several minutes.").format(method=method, names=names)
        ):  # fmt: skip
            return False
        if any(name == "torch" for name, _requirement in missing):
            try:
                import PyTorchUtils
            except ModuleNotFoundError as error:
                raise RuntimeError(
                    _("The {method} method needs the PyTorch extension: install 'PyTorch' in the Extensions "
                      "Manager, restart Slicer and try again.").format(method=method)
                ) from error
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled() and torchLogic.installTorch(askConfirmation=False) is None:
                raise RuntimeError(_("PyTorch could not be installed; see the PyTorch Utils module."))
        others = [requirement for _name, requirement in missing if requirement]  # never torch/SimpleITK
        if others:
            slicer.util.pip_install(others)
        still = [name for name, _requirement in missing_packages(method) if importlib.util.find_spec(name) is None]
        if still:
            raise RuntimeError(_("Still missing after installation: {names}").format(names=", ".join(still)))
        return True

    @staticmethod
    def showResult(result) -> None:
        """Show the reconstructed volume in the slice views and the segmentation in 3D."""
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
    """Self test on an MR phantom made in-process (no download, no PyTorch: method 'shape')."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_shape_on_phantom()

    def test_shape_on_phantom(self):
        self.delayDisplay("Scanning an MR phantom (SAX stack + 3 LAX planes)")
        from CardiacDiffusionLib.phantoms.mr import MRPhantom
        from CardiacDiffusionLib.phantoms.scanner import LAX_VIEWS, acquire_lax, acquire_sax

        phantom = MRPhantom(seed=3)
        stack = acquire_sax(phantom, pixel_mm=2.5, matrix=64, sub_planes=3)
        scene = slicer.mrmlScene
        sax = mrml.volume_node_from_image(scene, stack.to_image(), "SAX")
        sax_labels = mrml.volume_node_from_image(scene, stack.to_image(labels=True), "SAX labels", labelmap=True)
        lax_images = {view: acquire_lax(phantom, view, pixel_mm=2.5, matrix=64, sub_planes=3)[1] for view in LAX_VIEWS}
        lax = [mrml.volume_node_from_image(scene, image, view, labelmap=True) for view, image in lax_images.items()]
        nodes_before = scene.GetNumberOfNodes()

        self.delayDisplay("Reconstructing (shape) in a child process")
        result = ReconstructionLogic().run(sax, sax_labels, lax, method="shape", spacing=2.0, wait=True)

        volume = mrml.image_from_volume_node(result.volume)
        self.assertAlmostEqual(volume.GetSpacing()[2], 2.0, places=6)
        self.assertEqual(volume.GetSize()[:2], stack.to_image().GetSize()[:2])
        names = {result.segmentation.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(result.segmentation.GetSegmentation().GetNumberOfSegments())}  # fmt: skip
        self.assertEqual(names, {"LV cavity", "LV myocardium", "RV cavity"})
        self.assertEqual(set(result.lax_dice), {"2ch", "3ch", "4ch"})
        for view, row in result.lax_dice.items():
            self.assertGreater(row["LV"], 0.8, f"LV Dice on {view}")
        # the child computed what the Lib computes in-process on the same data
        from CardiacDiffusionLib.reconstruction.lax_check import lax_dice_table
        from CardiacDiffusionLib.reconstruction.volume import reconstruct

        self.assertEqual(result.lax_dice, lax_dice_table(reconstruct(stack, "shape", 2.0).labels, lax_images))
        self.assertGreater(scene.GetNumberOfNodes(), nodes_before)
        self.delayDisplay("Test passed")
