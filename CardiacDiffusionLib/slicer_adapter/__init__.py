"""Slicer side of the Lib, without Qt: MRML adapter, child-process runner, module logic cores.

``mrml`` converts MRML nodes to and from SimpleITK images, segmentations, models, tables and
markups; ``process`` runs a long job as a child process with JSON-line progress and cancel;
``reconstruction`` is the Reconstruction module's logic. ``slicer`` is imported only inside
functions, so this package imports in plain Python; the tests run it on slicer-core.
"""
