"""Shared fixtures: ``mrml_scene`` builds a real MRML scene from slicer-core (tests marked ``mrml``)."""

from __future__ import annotations

import pytest


def _slicer_core():
    try:
        import slicer
    except ImportError:
        return None
    # the unrelated PyPI package "slicer" has the same import name: it must not pass for Slicer
    assert hasattr(slicer, "vtkMRMLScene"), (
        f"'import slicer' found {slicer.__file__}, not slicer-core; uninstall the PyPI package 'slicer'"
    )
    return slicer


def pytest_collection_modifyitems(config, items):
    marked = [item for item in items if item.get_closest_marker("mrml")]
    if marked and _slicer_core() is None:
        skip = pytest.mark.skip(reason="slicer-core is not installed (pip install -e .[slicer])")
        for item in marked:
            item.add_marker(skip)


def make_mrml_scene(slicer):
    """A scene with the logics Slicer would set up (``slicer_adapter.mrml.headless_scene``)."""
    from CardiacDiffusionLib.slicer_adapter.mrml import headless_scene

    return headless_scene()


@pytest.fixture
def mrml_scene():
    """A fresh :func:`make_mrml_scene`; ``slicer.mrmlScene`` is set to it for ``slicer.util``."""
    slicer = _slicer_core()
    if slicer is None:
        pytest.skip("slicer-core is not installed")
    scene = make_mrml_scene(slicer)
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = scene
    yield scene
    scene.Clear(1)
    slicer.mrmlScene = previous


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small 3D nets run several times faster on one thread than on two shared, busy cores (20x seen)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
