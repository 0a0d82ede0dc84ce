"""Several frames of a SAX cine reconstructed into volume sequences that follow the cine's browser.

``FramesJob(scene, sax_proxy, frames, sax_labels=None, **options)``: ``sax_proxy`` is the proxy volume node of a
sequence browser (a loaded cine), ``frames`` ``"all"`` or 0-based item numbers of its sequence, ``options`` those
of ``ReconstructionJob`` (method, spacing, ...). Each frame's sequence item (not the proxy: the browser's selected
frame is never moved) is exported with its labels, from ``sax_labels``, the proxy of a label sequence in the same
browser, for the frames that have an item there (e.g. ED and ES), and one child process reconstructs them all
(``reconstruct --sax frames.json --phase all``: torch and dmcvr's model load once); each frame's outputs are read
back, one per ``poll``, as the child finishes it. The results become
NEW sequences (volumes, and labelmaps where labels were made) at the input's index values, added to the input's
browser as synchronised sequences, empty on the frames not reconstructed. Nothing is added to the scene before the
last frame is done; no input node, sequence item or the browser's selected frame is changed.

The Reconstruction panel's "All cine frames" (``ALL_FRAMES``): :func:`all_frames_offer` says whether it applies to
the SAX volume (a cine's proxy, and which browser) and why not; :func:`panel_run_options` turns the panel's fields
into ``ReconstructionLogic.run``'s ``frames`` and outputs, refusing in the panel's words what a multi-frame run
cannot take; :func:`frames_summary` says what such a run made.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import SimpleITK as sitk

from ..errors import InputError
from . import mrml, sequences
from ..utils.jsonfile import write_json
from .job import ProgressCallback, write_label_node
from .process import ProcessFailed
from .reconstruction import ReconstructionJob


@dataclass
class FramesResult:
    volumes: object  # vtkMRMLSequenceNode of scalar volumes, one per reconstructed frame
    labels: object | None  # vtkMRMLSequenceNode of labelmaps (frames that got labels), or None
    browser: object  # the input's vtkMRMLSequenceBrowserNode, now also browsing these
    volume_proxy: object  # the proxy node showing ``volumes`` at the browser's frame
    labels_proxy: object | None
    frames: list[str] = field(default_factory=list)  # what each frame was made from
    warnings: list[str] = field(default_factory=list)  # geometry.json's, each with its frame
    log: list[str] = field(default_factory=list)


#: the panel's check box (Reconstruction.ui) and its field labels, as the panel's refusals name them
ALL_FRAMES = "All cine frames"
LAX_FIELDS = ("LAX labels 1", "LAX labels 2", "LAX labels 3")
#: why the panel's output selectors are off while a multi-frame run is chosen
OUTPUTS_NOTE = (f"Not used with {ALL_FRAMES}: each frame's result goes into new sequences ('<SAX volume> <method>' "
                "and '... labels') that join the cine's sequence browser")  # fmt: skip


@dataclass(frozen=True)
class CineOffer:
    """Whether "All cine frames" applies to a SAX volume node: its cine's browser and sequence, or why not."""

    browser: object | None  # the vtkMRMLSequenceBrowserNode whose proxy the SAX volume is; None: not a cine
    sequence: object | None
    count: int  # frames (items) of the cine's sequence
    tooltip: str  # what ticking it does, or why it is off

    @property
    def enabled(self) -> bool:
        return self.browser is not None and self.count > 0


def all_frames_offer(sax_volume) -> CineOffer:
    """:class:`CineOffer` for the panel's SAX volume (None: none selected)."""
    browser = sequences.browser_of(sax_volume)
    if browser is None:
        why = "no SAX volume is selected" if sax_volume is None else f"SAX volume '{sax_volume.GetName()}' is a plain volume"
        return CineOffer(None, None, 0, f"Off: {why}, not a loaded cine. Load the cine as a sequence (e.g. a DICOM cine "
                                        "loaded as a volume sequence) and choose the volume its browser shows")  # fmt: skip
    sequence = browser.GetSequenceNode(sax_volume)
    count = 0 if sequence is None else sequence.GetNumberOfDataNodes()
    where = f"sequence '{sequence.GetName() if sequence else '?'}' (sequence browser '{browser.GetName()}')"
    if count == 0:
        return CineOffer(browser, sequence, 0, f"Off: {where} holds no frame")
    return CineOffer(browser, sequence, count, (
        f"Reconstruct each of the {count} frames of {where}, not only the shown one, into new sequences that join its "
        "browser. SAX labels: none, or the labels a label sequence in the same browser shows (labels of some frames, "
        "e.g. ED and ES, are enough). No LAX check; the outputs below are not used"))  # fmt: skip


def panel_run_options(all_frames: bool, sax_volume, sax_labels=None, lax_label_nodes: Sequence = (),
                      output_volume=None, output_segmentation=None) -> dict:  # fmt: skip
    """``ReconstructionLogic.run``'s ``frames``, ``output_volume`` and ``output_segmentation`` from the panel's fields.

    "All cine frames" ticked on a cine's proxy: ``frames="all"``, no output nodes (the results are new sequences);
    SAX labels that are not the proxy of a label sequence in the cine's browser, or LAX labels, are refused here in
    the panel's words before anything starts. Unticked, or a plain SAX volume (the box is off): the shown frame.
    """
    offer = all_frames_offer(sax_volume)
    if not (all_frames and offer.enabled):
        return {"frames": None, "output_volume": output_volume, "output_segmentation": output_segmentation}
    browser = offer.browser.GetName()
    if sax_labels is not None and sequences.browser_of(sax_labels) is not offer.browser:
        other = sequences.browser_of(sax_labels)
        what = "a plain node" if other is None else f"shown by sequence browser '{other.GetName()}', not '{browser}'"
        raise InputError(
            f"SAX labels '{sax_labels.GetName()}': {what}; with {ALL_FRAMES} ticked choose as SAX labels the labels a "
            f"label sequence in sequence browser '{browser}' shows (labels of some frames, e.g. ED and ES, are enough), "
            f"or leave SAX labels empty, or untick {ALL_FRAMES} to reconstruct the shown frame with these labels"
        )
    for field_name, node in zip(LAX_FIELDS, lax_label_nodes):
        if node is not None:
            raise InputError(
                f"{field_name} '{node.GetName()}': the LAX Dice check is of one reconstructed frame; with {ALL_FRAMES} "
                f"ticked leave LAX labels 1-3 empty, or untick {ALL_FRAMES} to "
                "reconstruct the shown frame with the check"
            )
    return {"frames": "all", "output_volume": None, "output_segmentation": None}


def frames_summary(result: "FramesResult") -> list[str]:
    """The panel's log lines for a multi-frame result: the new sequences, their browser, each frame made, warnings."""
    made = [f"'{result.volumes.GetName()}' ({result.volumes.GetNumberOfDataNodes()} frames)"]
    if result.labels is not None:
        made.append(f"'{result.labels.GetName()}' ({result.labels.GetNumberOfDataNodes()} frames)")
    lines = [f"new sequence{'s' * (len(made) > 1)} {' and '.join(made)} joined sequence browser '{result.browser.GetName()}': "
             "play or step the cine to see them"]  # fmt: skip
    return lines + [f"made: {frame}" for frame in result.frames] + [f"warning: {w}" for w in result.warnings]


class _CineChild(ReconstructionJob):
    """The one child of a :class:`FramesJob`: its planned frames exported with a frames manifest, then
    ``reconstruct --phase all``; each frame's outputs are read by the owner as the child finishes them."""

    def __init__(self, owner: "FramesJob", scene, sax_volume, **options):
        super().__init__(scene, sax_volume, **options)
        self.owner = owner
        self.items: dict[Path, str] = {}  # an exported file -> the sequence item it holds, as messages name it

    def _item(self, path: Path, proxy, item: int, cine_item: int) -> Path:
        """Record that ``path`` holds item ``item`` of ``proxy``'s sequence, at cine frame ``cine_item`` (named so in
        messages, not as the node outside the scene that exported it); returns ``path``."""
        sequence = self.owner.browser.GetSequenceNode(proxy)
        at = self.owner._frame(cine_item).index_text
        self.items[Path(path)] = f"frame {item + 1} of sequence '{sequence.GetName()}' ({at})"
        return path

    def _panel_terms(self, text: str) -> str:
        for path, said in self.items.items():
            text = text.replace(str(path), said)
        for path, said in self.items.items():
            text = text.replace(path.name, said)
        return super()._panel_terms(text)

    def _export(self, folder: Path) -> list[str]:
        owner, entries = self.owner, []
        for n, (item, _, label_item) in enumerate(owner.plan):
            image = sequences.frame_node(owner.sax_volume, item)
            path = self._item(self._exported(folder / f"frame_{n:03d}.nrrd", image), owner.sax_volume, item, item)
            mrml.save_volume(image, path)
            entry = {"sax": path.name}
            if label_item is not None:
                labels = sequences.frame_node(owner.sax_labels, label_item)
                label_path = self._item(self._exported(folder / f"frame_{n:03d}_labels.nrrd", labels), owner.sax_labels,
                                        label_item, item)  # fmt: skip
                write_label_node(labels, label_path, mrml.image_from_volume_node(image), self.label_numbering)
                entry["sax_labels"] = label_path.name
            entries.append(entry)
        write_json(folder / MANIFEST, {"frames": entries})
        return ["--method", self.method, "--sax", str(folder / MANIFEST), *self._method_arguments(), "--phase", "all"]

    def _on_message(self, message) -> None:
        self.owner._child_message(message)

    def _load(self, out: Path) -> Path:
        while self.owner._load_next(out):  # the frames the owner has not read yet, before the folder goes
            pass
        return out

    @property
    def running(self) -> bool:
        """Until every frame is read back (the child may have exited before the last ones are)."""
        child = self.child
        return not self._cancelled and self.result is None and child is not None and (
            not child.finished or child.process.returncode == 0)  # fmt: skip


#: the child's frames manifest (``reconstruct --sax frames.json --phase all``) and how it names a frame
MANIFEST = "frames.json"
_CHILD_FRAME = re.compile(r"phase \d+ \((\d+) of \d+ in this run\): ")
#: the child's lines saying where it wrote a frame and the run (its temporary folder, read back into the sequences,
#: which the log's summary names), and that it starts a frame (naming the exported sequence item; the job's own line
#: names the frame and its labels): not logged
_NOT_LOGGED = re.compile(r"\w+: (wrote .+ to |\d+ phases? written to )|phase \d+ \(\d+ of \d+ in this run\): "
                          r"reconstructing with ")


class FramesJob:
    """Frames of a cine, one child process for all; see the module docstring. ``start`` -> ``poll``/``wait``."""

    def __init__(self, scene, sax_volume, frames: str | Sequence[int] = "all", sax_labels=None, **options):
        for key in ("output_volume", "output_segmentation", "lax_label_nodes"):
            if options.get(key):
                raise InputError(f"{key.replace('_', ' ')}: not taken when reconstructing several frames (the "
                                 "results are new sequences); leave it empty")  # fmt: skip
        if sax_volume is None or sequences.browser_of(sax_volume) is None:
            name = "none selected" if sax_volume is None else f"'{sax_volume.GetName()}' is a plain volume"
            raise InputError(f"SAX volume: {name}; several frames are read from a cine: choose the volume a loaded "
                             "cine shows (the proxy node of its sequence browser), or reconstruct one volume")  # fmt: skip
        self.scene, self.sax_volume, self.sax_labels, self.options = scene, sax_volume, sax_labels, options
        self.browser = sequences.browser_of(sax_volume)
        self.sequence = self.browser.GetSequenceNode(sax_volume)
        count = self.sequence.GetNumberOfDataNodes()
        items = list(range(count)) if frames == "all" else [int(k) for k in frames]
        bad = sorted({k for k in items if not 0 <= k < count} | {k for k in items if items.count(k) > 1})
        if bad or not items:
            raise InputError(f"frames {bad or items}: sequence '{self.sequence.GetName()}' has items 0-{count - 1} "
                             "(0-based, as the browser's item number); give each once, or 'all'")  # fmt: skip
        label_sequence = None
        if sax_labels is not None:
            if sequences.browser_of(sax_labels) is not self.browser:
                raise InputError(f"SAX labels '{sax_labels.GetName()}': for several frames give the proxy node of a "
                                 f"label sequence in sequence browser '{self.browser.GetName()}' (labels of some "
                                 "frames, e.g. ED and ES), or none")  # fmt: skip
            label_sequence = self.browser.GetSequenceNode(sax_labels)
        self.plan = []  # (item, index value, label item or None)
        for k in items:
            value = self.sequence.GetNthIndexValue(k)
            j = label_sequence.GetItemNumberFromIndexValue(value, True) if label_sequence is not None else -1
            self.plan.append((k, value, j if j >= 0 else None))
        ReconstructionJob(scene, sax_volume, **options)  # the options are checked now, before the child starts
        self.method = options.get("method", "shape")
        self.job: _CineChild | None = None
        self.result: FramesResult | None = None
        self.log: list[str] = []
        self._done: list = []  # (item, value, label item, image, labels, warnings), read back one per poll
        self._finished: list[str] = []  # the child's frame folders complete, in plan order
        self._current: int | None = None  # the plan position the child works on
        self._callback: ProgressCallback | None = None

    def _frame(self, item: int) -> sequences.Frame:
        primary = self.browser.GetMasterSequenceNode()
        return sequences.Frame(self.sax_volume.GetName(), self.browser.GetName(), self.sequence.GetName(), item,
                               self.sequence.GetNumberOfDataNodes(), primary.GetIndexName(),
                               self.sequence.GetNthIndexValue(item), primary.GetIndexUnit())  # fmt: skip

    # ---- steps ----------------------------------------------------------------------------------
    def start(self, progress_callback: ProgressCallback | None = None) -> "FramesJob":
        """Export every planned frame and start the one child (returns at once)."""
        self._callback = progress_callback
        self.job = _CineChild(self, self.scene, self.sax_volume, **self.options)
        self.job.start(lambda fraction, text: self._report(None, text))  # the bar goes by the frames
        return self

    def _child_message(self, message) -> None:
        """The child's progress lines as the frames' (each frame 1/n of the bar); its log lines, naming the frame."""
        text = self.job._in_module_terms(message.text) if message.text else message.text
        n = message.data.get("frame") if message.kind == "progress" else None
        if n is None:
            if text and not _NOT_LOGGED.match(message.text):
                said = _CHILD_FRAME.search(text)  # also in its error line ("error: phase 1 (2 of 3 ...): ...")
                where = self.plan[int(said[1]) - 1][0] if said else self.plan[self._current or 0][0]
                self.log.append(f"frame {where + 1}: {text[:said.start()] + text[said.end():] if said else text}")
                self._report(None, self.log[-1])
            return
        n, item = int(n), self.plan[int(n)][0]
        if n != self._current:  # the child started this frame
            self._current = n
            said = f"{self._frame(item).describe()}: {'with' if self.plan[n][2] is not None else 'without'} SAX labels"
            self.log.append(said)
            self._report(n / len(self.plan), said)
        within = float(message.data.get("frame_progress") or 0.0)
        said = _CHILD_FRAME.match(text or "")
        self._report((n + within) / len(self.plan), f"frame {item + 1}: {text[said.end():] if said else text}")
        if message.data.get("folder"):
            self._finished.append(str(message.data["folder"]))

    def _load_next(self, out: Path) -> bool:
        """Read the next frame the child has finished into ``_done``; False when there is none."""
        if len(self._done) >= len(self._finished):
            return False
        folder = out / self._finished[len(self._done)]
        labels = folder / "reconstruction_labels.nii.gz"
        said = [self.job._in_module_terms(w) for w in json.loads((folder / "geometry.json").read_text()).get("warnings", [])]
        image = sitk.ReadImage(str(folder / "reconstruction_image.nii.gz"))
        self._done.append((*self.plan[len(self._done)], image, sitk.ReadImage(str(labels)) if labels.exists() else None, said))
        return True

    def poll(self) -> bool:
        """Forward the child's progress; read back one finished frame, or build the sequences. True when done."""
        if self.result is not None:
            return True
        if not self.job._cancelled:
            self._said(lambda: self.job.child.poll(self.job._on_message))
            if self.job.result is None and self._load_next(self.job.folder / "out"):  # one frame per tick
                return False
        if not self._said(self.job.poll):
            return False
        self.result = self._sequences()
        self._report(1.0, "done")
        return True

    def wait(self, timeout: float | None = None):
        """Block until every frame is done (``None`` when ``timeout`` s, for the whole run, ran out)."""
        if self.result is None and self.job.result is None and self._said(lambda: self.job.wait(timeout)) is None:
            return None
        while not self.poll():
            pass
        return self.result

    def _said(self, call):
        """``call()``; its error names the frame it came from."""
        try:
            return call()
        except (InputError, ProcessFailed) as error:
            text, said = str(error), _CHILD_FRAME.search(str(error))
            if said:  # the child's error names the frame of its run
                n, text = int(said[1]) - 1, text[: said.start()] + text[said.end():]
            else:  # cancelled: the first frame not read back; else the one the child was on
                n = len(self._done) if self.job._cancelled or self._current is None else self._current
            where = f"frame {self.plan[min(n, len(self.plan) - 1)][0] + 1} of {self.sequence.GetNumberOfDataNodes()}"
            if isinstance(error, ProcessFailed):  # its exit code (2: an input refused) and detail kept
                detail = _CHILD_FRAME.sub("", error.detail, count=1)
                raise ProcessFailed(f"{where}: {text}", error.returncode, f"{where}: {detail}") from None
            raise InputError(f"{where}: {text}") from None

    def cancel(self) -> None:
        """Stop the child; nothing is added to the scene (the frames done are dropped)."""
        if self.job is not None and self.result is None:
            self.job.cancel()
            self._report(None, f"cancelled after {len(self._done)} of {len(self.plan)} frames: no sequence was added")

    @property
    def running(self) -> bool:
        """Until every frame is read back; False once cancelled or the child failed."""
        return self.result is None and self.job is not None and self.job.running

    def _report(self, fraction: float | None, text: str) -> None:
        if self._callback is not None:
            self._callback(fraction, text)

    # ---- results --------------------------------------------------------------------------------
    def _new_sequence(self, name: str):
        node = mrml._slicer().vtkMRMLSequenceNode()
        node.SetName(self.scene.GenerateUniqueName(name))
        node.SetIndexName(self.sequence.GetIndexName())
        node.SetIndexUnit(self.sequence.GetIndexUnit())
        node.SetIndexType(self.sequence.GetIndexType())
        return node

    def _sequences(self) -> FramesResult:
        slicer = mrml._slicer()
        base = f"{self.sax_volume.GetName()} {self.method}"
        volumes, labels = self._new_sequence(base), None
        frames, warnings = [], []
        for item, value, label_item, image, label_image, said in self._done:
            frame = self._frame(item)
            node = mrml.volume_node_from_image(None, image, base, node=slicer.vtkMRMLScalarVolumeNode())
            sequences.record_source(node, frame)
            volumes.SetDataNodeAtValue(node, value)
            if label_image is not None:
                labels = labels or self._new_sequence(f"{base} labels")
                label_node = mrml.volume_node_from_image(None, label_image, base, node=slicer.vtkMRMLLabelMapVolumeNode())
                sequences.record_source(label_node, frame)
                labels.SetDataNodeAtValue(label_node, value)
            given = "with SAX labels" if label_item is not None else "without SAX labels"
            frames.append(f"{frame.describe()}, {given}{', labels made' if label_image is not None else ''}")
            warnings += [f"frame {item + 1} ({frame.index_text}): {w}" for w in said]
        proxies = []
        for sequence in filter(None, (volumes, labels)):
            self.scene.AddNode(sequence)
            self.browser.AddSynchronizedSequenceNodeID(sequence.GetID())
            self.browser.SetSaveChanges(sequence, False)
            # an empty proxy on frames not reconstructed (DisplayHidden would keep showing the previous frame's)
            self.browser.SetMissingItemMode(sequence, self.browser.MissingItemSetToDefault)
            proxies.append(self.browser.GetProxyNode(sequence))
        proxies.append(None)
        return FramesResult(volumes, labels, self.browser, proxies[0], proxies[1] if labels else None, frames, warnings, list(self.log))
