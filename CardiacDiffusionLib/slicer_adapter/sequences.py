"""Cine sequences: which frame a proxy node of a sequence browser shows, and where results may not go.

A SAX cine loaded in Slicer is a ``vtkMRMLSequenceNode`` of volumes, a ``vtkMRMLSequenceBrowserNode`` and a
*proxy* volume node that shows the browser's selected frame. Reading the proxy reads that frame; the job says
which (:class:`Frame`) and records it on its outputs (:func:`record_source`). A proxy is never an output
(:func:`check_not_proxy`): the browser replaces its content on the next frame, and with the browser's "save
changes" on, writing into it changes the sequence's item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

#: node attributes naming the cine frame an output was made from (all removed when the input was no proxy)
SOURCE = "CardiacDiffusion.Source"
SOURCE_ATTRIBUTES = tuple(f"{SOURCE}{k}" for k in ("Frame", "Sequence", "ItemNumber", "IndexValue", "IndexUnit"))


@dataclass(frozen=True)
class Frame:
    """The sequence item a proxy node showed when it was read."""

    node: str  # the proxy node's name
    browser: str
    sequence: str
    item: int  # 0-based item number in ``sequence`` (as ``SetSelectedItemNumber``); the text says ``item + 1``
    count: int  # items in ``sequence``
    index_name: str  # e.g. "time"
    index_value: str  # e.g. "120" (the browser's index value)
    index_unit: str  # e.g. "ms"
    exact: bool = True  # False: ``sequence`` has no item at the browser's index value; the proxy shows another one

    @property
    def index_text(self) -> str:
        return " ".join(filter(None, (self.index_name, self.index_value, self.index_unit)))

    def describe(self) -> str:
        """E.g. ``frame 4 of 25 (time 120 ms) of sequence 'cine'``."""
        return f"frame {self.item + 1} of {self.count} ({self.index_text}) of sequence '{self.sequence}'"


def _browsers(scene) -> list:
    if scene is None:
        return []
    collection = scene.GetNodesByClass("vtkMRMLSequenceBrowserNode")
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def browser_of(node):
    """The sequence browser whose proxy ``node`` is, or None (a plain node, or a node outside a scene)."""
    if node is None or node.GetID() is None:
        return None
    return next((b for b in _browsers(node.GetScene()) if b.IsProxyNodeID(node.GetID())), None)


def proxy_frame(node) -> Frame | None:
    """The frame a proxy node shows now (its browser's selected item), or None for a plain node."""
    browser = browser_of(node)
    if browser is None:
        return None
    sequence = browser.GetSequenceNode(node)
    primary = browser.GetMasterSequenceNode()
    selected = browser.GetSelectedItemNumber()
    if sequence is None or primary is None or selected < 0 or primary.GetNumberOfDataNodes() == 0:
        raise InputError(f"node '{node.GetName()}': sequence browser '{browser.GetName()}' shows no frame in it; "
                         "select a frame in the Sequences module (or the sequence toolbar) first")  # fmt: skip
    value = primary.GetNthIndexValue(selected)
    item, exact = selected, True
    if sequence is not primary:  # a synchronised sequence (e.g. labels of some frames) matched by index value
        item = sequence.GetItemNumberFromIndexValue(value, True)
        exact = item >= 0
        if not exact:  # the browser shows another item there (its missing-item mode)
            item = sequence.GetItemNumberFromIndexValue(value, False)
    return Frame(node.GetName(), browser.GetName(), sequence.GetName(), int(item), sequence.GetNumberOfDataNodes(),
                 primary.GetIndexName(), value, primary.GetIndexUnit(), exact)  # fmt: skip


def check_not_proxy(node, what: str) -> None:
    """An InputError when ``node`` (an output the user chose) is the proxy of a sequence browser."""
    browser = browser_of(node)
    if browser is not None:
        raise InputError(
            f"{what} '{node.GetName()}': is the proxy node of sequence browser '{browser.GetName()}' (it shows one "
            "frame of a sequence): the next frame would replace the result, and with 'save changes' on it would "
            "overwrite the sequence's frame; choose a new output node instead"
        )


def record_source(node, frame: Frame | None) -> None:
    """Name the cine frame ``node`` was made from in its attributes and description; a plain input clears them."""
    if node is None:
        return
    had = node.GetAttribute(f"{SOURCE}Frame") is not None
    for name in SOURCE_ATTRIBUTES:
        node.RemoveAttribute(name)
    if frame is None:
        if had:
            node.SetDescription("")
        return
    values = (frame.describe(), frame.sequence, str(frame.item), frame.index_value, frame.index_unit)
    for name, value in zip(SOURCE_ATTRIBUTES, values):
        node.SetAttribute(name, value)
    node.SetDescription(f"made from {frame.describe()}")


def frame_node(proxy, item: int):
    """A volume node outside the scene holding ``proxy``'s sequence item ``item`` in ``proxy``'s world frame
    (its parent transform applied); the voxels are the item's own, shared: read it, never write it."""
    from . import mrml

    browser = browser_of(proxy)
    data = browser.GetSequenceNode(proxy).GetNthDataNode(int(item))
    if not data.IsA("vtkMRMLVolumeNode"):
        if proxy.GetParentTransformNode() is not None:
            raise InputError(f"node '{proxy.GetName()}': a segmentation sequence under a transform is not read "
                             "frame by frame; remove the transform or export the frames to labelmaps")  # fmt: skip
        return data
    world = mrml._to_world(proxy, f"node '{proxy.GetName()}'") @ mrml._numpy_matrix(mrml._get_ijk_to_ras(data))
    copy = data.NewInstance()
    copy.SetName(f"{proxy.GetName()} frame {int(item) + 1}")
    copy.SetIJKToRASMatrix(mrml._vtk_matrix(np.asarray(world)))
    copy.SetAndObserveImageData(data.GetImageData())
    return copy
