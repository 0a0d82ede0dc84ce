"""SyntheticData: sample paired CT image + heart label volumes from the 3D latent diffusion model.

Thin Slicer module: the widget binds the .ui to a parameter node; the logic hands the work to
``CardiacDiffusionLib.slicer_adapter.synthetic.SampleJob``, which runs
``PythonSlicer -m CardiacDiffusionLib.cli.main sample`` as a child process and loads each pair as
new nodes (a CT volume and a segmentation with named, coloured segments and 3D surfaces).
"""

import logging
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from CardiacDiffusionLib.slicer_adapter import dependencies, mrml
from CardiacDiffusionLib.slicer_adapter.synthetic import CT_DESCRIPTIONS, DEVICES, SampleJob


#
# SyntheticData
#
class SyntheticData(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Cardiac Synthetic Data")
        self.parent.categories = ["Cardiac"]
        self.parent.dependencies = []
        self.parent.contributors = ["CardiacDiffusion developers"]
        self.parent.helpText = _(
            "Samples new, paired cardiac CT image and label volumes (left/right atria and ventricles, LV "
            "myocardium, aorta, pulmonary artery, left atrial appendage) from a 3D latent diffusion model. "
            "Pair i starts from the noise of seed + i, so results are reproducible. Synthetic data for "
            "training and testing, not patient images. The work runs in a background process (a CUDA GPU "
            "makes it much faster); Cancel stops it. "
            'See <a href="https://github.com/CardiacDiffusion/SlicerCardiacDiffusion">the project page</a>.'
        )
        self.parent.acknowledgementText = _(
            "Follows the paired image + label latent diffusion of Hu et al., ML4H 2024, built on MONAI "
            "generative models (AutoencoderKL, DiffusionModelUNet)."
        )


#
# SyntheticDataParameterNode
#
@parameterNodeWrapper
class SyntheticDataParameterNode:
    """Settings of one sampling run (saved with the scene)."""

    count: Annotated[int, WithinRange(1, 100)] = 1
    seed: Annotated[int, WithinRange(0, 1000000)] = 0
    steps: Annotated[int, WithinRange(1, 1000)] = 50
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    model: str = ""
    cleanup: bool = True


#
# SyntheticDataWidget
#
class SyntheticDataWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
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
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SyntheticData.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SyntheticDataLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.modelBrowseButton.connect("clicked(bool)", self.onBrowseModel)
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

    def setParameterNode(self, inputParameterNode: Optional[SyntheticDataParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def onBrowseModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Choose an LDM model"), "", "Model (*.safetensors)")
        if path:
            self._parameterNode.model = path

    def _updateButtons(self, caller=None, event=None) -> None:
        running = self._job is not None
        self.ui.applyButton.enabled = bool(self._parameterNode) and not running
        self.ui.cancelButton.enabled = running

    def onApplyButton(self) -> None:
        p = self._parameterNode
        self.ui.logTextEdit.clear()
        self.ui.progressBar.value = 0
        with slicer.util.tryWithErrorDisplay(_("Could not start sampling."), waitCursor=True):
            if not self.logic.ensureDependencies():  # first use: offer to install what is missing
                return
            device, note = dependencies.check_device(p.device, "sampling")
            if note:  # no CUDA: say so clearly and run on the CPU
                self.ui.logTextEdit.appendPlainText(note)
                slicer.util.showStatusMessage(note, 15000)
                logging.warning(note)
            self._job = self.logic.run(
                count=p.count, seed=p.seed, steps=p.steps, device=device, model=p.model, cleanup=p.cleanup,
                wait=False, progress_callback=self.onProgress,
            )  # fmt: skip
            self._timer.start()
        self._updateButtons()

    def onTimer(self) -> None:
        job = self._job
        try:
            done = job.poll()
        except Exception as error:
            self._stop()
            slicer.util.errorDisplay(_("Sampling failed: {error}").format(error=error))
            return
        if done:
            self._stop()
            self.logic.showResult(job.result)

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
# SyntheticDataLogic
#
class SyntheticDataLogic(ScriptedLoadableModuleLogic):
    """Usable without the widget, e.g. from the Python console or ``Slicer --no-main-window``."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return SyntheticDataParameterNode(super().getParameterNode())

    def run(self, wait=True, progress_callback=None, **options):
        """Sample pairs (options: see ``SampleJob``: count, seed, steps, device, model, cleanup).

        ``wait=True`` blocks and returns a ``SampleResult`` (``.volumes``, ``.segmentations``, ``.info``);
        ``wait=False`` returns the running ``SampleJob`` (``poll()`` from a timer, ``cancel()`` to stop it).
        """
        job = SampleJob(slicer.mrmlScene, **options)
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
        """Show the first sampled volume in the slice views and its segmentation in 3D."""
        if not result.volumes:
            return
        slicer.util.setSliceViewerLayers(background=result.volumes[0], fit=True)
        result.segmentations[0].GetDisplayNode().SetVisibility3D(True)


#
# SyntheticDataTest
#
class SyntheticDataTest(ScriptedLoadableModuleTest):
    """Self test: one pair from the shipped LDM at few DDIM steps (skipped when no LDM is installed)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_one_pair()

    def test_one_pair(self):
        import importlib.util

        import numpy as np

        if importlib.util.find_spec("torch") is None:
            self.skipTest("torch is not installed: install it in the PyTorch Utils module")
        from CardiacDiffusionLib.errors import InputError
        from CardiacDiffusionLib.ldm.generate import DEFAULT_MODEL
        from CardiacDiffusionLib.models.store import find_model

        try:
            find_model(DEFAULT_MODEL)
        except InputError:
            self.skipTest(f"no LDM model {DEFAULT_MODEL!r} is installed")
        self.delayDisplay("Sampling one pair (10 DDIM steps) in a child process")
        result = SyntheticDataLogic().run(count=1, seed=0, steps=10, device="cpu", wait=True)
        self.assertEqual(len(result.volumes), 1)
        image = mrml.image_from_volume_node(result.volumes[0])
        hu = slicer.util.arrayFromVolume(result.volumes[0])
        self.assertTrue(-200 <= hu.min() and hu.max() <= 800, (hu.min(), hu.max()))  # the model's HU window
        segmentation = result.segmentations[0].GetSegmentation()
        names = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
        self.assertIn("Left ventricle", names)
        self.assertTrue(names <= set(CT_DESCRIPTIONS.values()), names)
        self.assertTrue(np.allclose(image.GetDirection(), np.eye(3).ravel()))
        self.delayDisplay("Test passed")
