"""ActivationMap: labelled SAX slices + strain or a TOS table -> late mechanical activation on the myocardium.

Thin Slicer module: the widget binds the .ui to a parameter node; the logic hands the work to
``CardiacDiffusionLib.slicer_adapter.activation.ActivationJob``, which exports the inputs, runs
``PythonSlicer -m CardiacDiffusionLib.cli.main lma`` as a child process and loads the results as new
nodes (model with TOS scalars and colour legend, sector points with their TOS, AHA bullseye image, segment table).
"""

import logging
from typing import Annotated, Optional, Union

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
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
from CardiacDiffusionLib.slicer_adapter.activation import (
    DEVICES,
    METHODS,
    TOS_ARRAY,
    TOS_METHODS,
    ActivationJob,
    parse_numbers,
)
from CardiacDiffusionLib.slicer_adapter.job import LABEL_NUMBERINGS

LabelNode = Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]


#
# ActivationMap
#
class ActivationMap(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Cardiac Activation Map")
        self.parent.categories = ["Cardiac"]
        self.parent.dependencies = []
        self.parent.contributors = ["CardiacDiffusion developers"]
        self.parent.helpText = _(
            "Late mechanical activation (LMA): from labelled short-axis slices (1 LV cavity, 2 LV myocardium, "
            "3 RV cavity) and either DENSE strain matrices (.npy, slices x 18 sectors x frames) or a table of "
            "time to onset of shortening (TOS, .csv: slice, sector, tos_ms), paints TOS on the 3D myocardium, "
            "draws the AHA bullseye and suggests an LV lead segment. Results: the painted myocardium (point arrays "
            "TOS_ms, late_activation, aha_segment), the sector points with the TOS they were given (same colours), "
            "the bullseye image and the segment table. The late region is the map's upper quarter (percentile 75) "
            "or TOS at or above a threshold in ms. <b>Decision support, not a diagnosis.</b> "
            "The work runs in a background process; Cancel stops it. "
            'See <a href="https://github.com/CardiacDiffusion/SlicerCardiacDiffusion">the project page</a>.'
        )
        self.parent.acknowledgementText = _(
            "The sadir myocardium follows SADIR (shape-aware diffusion of an atlas by LDDMM geodesic shooting); "
            "TOS from DENSE strain follows the onset-of-shortening definition used in cardiac resynchronisation "
            "studies."
        )


#
# ActivationMapParameterNode
#
@parameterNodeWrapper
class ActivationMapParameterNode:
    """Inputs and settings of one activation map (saved with the scene)."""

    saxLabels: LabelNode
    saxVolume: vtkMRMLScalarVolumeNode
    rvInsertion: vtkMRMLMarkupsFiducialNode
    strainFile: str = ""
    tosFile: str = ""
    frameMs: Annotated[float, WithinRange(1.0, 200.0)] = 17.0
    tosMethod: Annotated[str, Choice(list(TOS_METHODS))] = "detector"
    method: Annotated[str, Choice(list(METHODS))] = "shape"
    spacing: Annotated[float, WithinRange(0.1, 20.0)] = 1.0
    latePercentile: Annotated[float, WithinRange(1.0, 99.0)] = 75.0
    lateThresholdMs: Annotated[float, WithinRange(0.0, 300.0)] = 0.0  # 0: the percentile rule (the CLI's default)
    scar: str = ""
    includeApical: bool = False
    strainSlices: str = ""
    basePoint: vtkMRMLMarkupsFiducialNode
    apexPoint: vtkMRMLMarkupsFiducialNode
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    labelNumbering: Annotated[str, Choice(list(LABEL_NUMBERINGS))] = "project"


#
# ActivationMapWidget
#
class ActivationMapWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
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
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ActivationMap.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ActivationMapLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.strainBrowseButton.connect("clicked(bool)", lambda: self._browse("strainFile", "Strain (*.npy)"))
        self.ui.tosBrowseButton.connect("clicked(bool)", lambda: self._browse("tosFile", "TOS table (*.csv)"))
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

    def setParameterNode(self, inputParameterNode: Optional[ActivationMapParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _browse(self, field: str, fileFilter: str) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Choose a file"), "", fileFilter)
        if path:
            setattr(self._parameterNode, field, path)

    def _updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        running = self._job is not None
        ready = bool(p and p.saxLabels and bool(p.strainFile) != bool(p.tosFile))
        self.ui.applyButton.enabled = ready and not running
        self.ui.applyButton.toolTip = (
            _("Compute the activation map") if ready else _("Select the SAX labels and one strain or TOS file")
        )
        self.ui.cancelButton.enabled = running
        self.ui.latePercentileSpinBox.enabled = not (p and p.lateThresholdMs > 0)  # a threshold replaces it
        self.ui.deviceComboBox.enabled = bool(p and p.method == "sadir")
        for widget in (self.ui.strainSlicesLineEdit, self.ui.frameMsSpinBox, self.ui.tosMethodComboBox):
            widget.enabled = bool(p and p.strainFile)  # strain settings: not used with a TOS table

    def onApplyButton(self) -> None:
        p = self._parameterNode
        self.ui.logTextEdit.clear()
        self.ui.progressBar.value = 0
        with slicer.util.tryWithErrorDisplay(_("Could not start the activation map."), waitCursor=True):
            if not self.logic.ensureDependencies():  # first use: offer to install what is missing
                return
            device = p.device
            if p.method == "sadir":
                device, note = dependencies.check_device(p.device, "the sadir myocardium")
                if note:  # no CUDA: say so clearly and run on the CPU
                    self.ui.logTextEdit.appendPlainText(note)
                    logging.warning(note)
            self._job = self.logic.run(
                p.saxLabels, strain_file=p.strainFile, tos_file=p.tosFile, sax_volume=p.saxVolume,
                rv_insertion=p.rvInsertion, method=p.method, spacing=p.spacing, frame_ms=p.frameMs,
                tos_method=p.tosMethod, late_percentile=p.latePercentile,
                late_threshold_ms=p.lateThresholdMs if p.lateThresholdMs > 0 else None,
                scar=parseSegments(p.scar), include_apical=p.includeApical,
                strain_slices=parse_numbers(p.strainSlices, "strain slices") if p.strainFile else None,
                base=p.basePoint, apex=p.apexPoint, device=device, label_numbering=p.labelNumbering,
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
            slicer.util.errorDisplay(_("Activation map failed: {error}").format(error=error))
            return
        if done:
            self._stop()
            for line in self.logic.summary(job.result):
                self.ui.logTextEdit.appendPlainText(line)
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


def parseSegments(text: str) -> list:
    """AHA segment numbers from text like '5, 11, 13-15' (scar segments are never suggested for the lead)."""
    return parse_numbers(text, "scar segments")


#
# ActivationMapLogic
#
class ActivationMapLogic(ScriptedLoadableModuleLogic):
    """Usable without the widget, e.g. from the Python console or ``Slicer --no-main-window``."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return ActivationMapParameterNode(super().getParameterNode())

    def run(self, sax_labels, wait=True, progress_callback=None, **options):
        """Map late activation on ``sax_labels`` (options: see ``ActivationJob``).

        ``wait=True`` blocks and returns an ``ActivationResult`` (``.model``, ``.bullseye``, ``.table``,
        ``.lma``); ``wait=False`` returns the running ``ActivationJob`` (``poll()`` from a timer, ``cancel()``).
        """
        job = ActivationJob(slicer.mrmlScene, sax_labels, **options)
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
    def summary(result) -> list:
        """The cine frame read (a proxy input), the QA flags and the lead suggestion (decision support), one line each."""
        lines = [f"frame used: {frame}" for frame in getattr(result, "frames", [])]  # a cine's proxy node as input
        lines += [f"{flag['severity']}: {flag['message']}" for flag in result.lma.get("qa", [])]
        lead = result.lma.get("lead", {})
        if lead.get("segment") is not None:
            from CardiacDiffusionLib.activation.bullseye import near_ties_text

            ties = f"; {near_ties_text(lead)}" if near_ties_text(lead) else ""
            lines.append(
                f"Decision support, not a diagnosis: latest-activating eligible segment {lead['segment']} "
                f"({lead['name']}, median TOS {lead['tos_median_ms']:.0f} ms{ties})."
            )
        return lines

    @staticmethod
    def showResult(result) -> None:
        """Show the painted myocardium in 3D and select the segment table."""
        result.model.GetDisplayNode().SetVisibility(True)
        layout = slicer.app.layoutManager()
        if layout is not None and layout.threeDViewCount > 0:  # a layout without 3D view (or no main window) has none
            layout.threeDWidget(0).threeDView().resetFocalPoint()
        slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(result.table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()


#
# ActivationMapTest
#
class ActivationMapTest(ScriptedLoadableModuleTest):
    """Self test on an MR phantom with a known LBBB TOS pattern (no download)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_tos_table_on_phantom()

    def test_tos_table_on_phantom(self):
        import importlib.util
        import tempfile
        from pathlib import Path

        import numpy as np
        from vtk.util.numpy_support import vtk_to_numpy

        if importlib.util.find_spec("torch") is None:  # the Lib's command line imports torch
            self.skipTest("torch is not installed: install it in the PyTorch Utils module")
        from CardiacDiffusionLib.activation.pipeline import run_lma
        from CardiacDiffusionLib.activation.sectors import lv_frame
        from CardiacDiffusionLib.activation.tos import write_tos_csv
        from CardiacDiffusionLib.phantoms.activation import ActivationPhantom
        from CardiacDiffusionLib.phantoms.mr import MRPhantom
        from CardiacDiffusionLib.phantoms.scanner import acquire_sax

        self.delayDisplay("Scanning an MR phantom and writing an LBBB TOS table")
        stack = acquire_sax(MRPhantom(0), noise_sigma=0.0, sub_planes=1, matrix=96, pixel_mm=2.0)
        frame = lv_frame(stack)
        tos = np.maximum(ActivationPhantom(3, "lbbb").sector_tos(len(frame.slices), 18), 17.0)
        scene = slicer.mrmlScene
        labels = mrml.volume_node_from_image(scene, stack.to_image(labels=True), "SAX labels", labelmap=True)
        voxels = slicer.util.arrayFromVolume(labels).copy()
        with tempfile.TemporaryDirectory(prefix="CardiacDiffusion-selftest-") as folder:
            table = write_tos_csv(Path(folder) / "tos.csv", dict(zip(frame.slices.tolist(), tos)))
            expected = run_lma(stack, tos_csv=table)
            self.delayDisplay("Mapping late activation in a child process")
            result = ActivationMapLogic().run(labels, tos_file=str(table), wait=True)

        values = vtk_to_numpy(result.model.GetPolyData().GetPointData().GetArray(TOS_ARRAY))
        self.assertGreaterEqual(values.min(), 17.0)
        self.assertLess(values.max(), 250.0)
        self.assertAlmostEqual(float(np.median(values)), float(np.median(tos)), delta=25.0)
        self.assertEqual(result.table.GetTable().GetNumberOfRows(), 17)
        sectors = vtk_to_numpy(result.sector_points.GetPolyData().GetPointData().GetArray(TOS_ARRAY))
        np.testing.assert_allclose(sectors, expected.tos.ravel(), atol=1e-3)  # the table's values, 18 a slice
        self.assertEqual(result.lma["lead"]["segment"], expected.lead["segment"])
        self.assertNotIn(result.lma["lead"]["segment"], (2, 3, 8, 9, 14))  # never a septal segment
        self.assertTrue(ActivationMapLogic.summary(result)[-1].startswith("Decision support, not a diagnosis"))
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(labels), voxels)  # input unchanged
        self.delayDisplay("Test passed")
