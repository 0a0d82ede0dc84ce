"""Slicer side of the Lib, without Qt: MRML adapter, child-process runner, module logic cores.

``mrml`` converts MRML nodes to and from SimpleITK images, segmentations, models, tables and
markups; ``process`` runs a long job as a child process with JSON-line progress and cancel;
``job`` is the export -> CLI child -> load pattern the module logics share; ``sequences`` tells which cine
frame a browser's proxy node shows (and refuses proxies as outputs), ``cine`` reconstructs several frames into
sequences; ``reconstruction``,
``activation`` and ``synthetic`` are the Reconstruction, ActivationMap and SyntheticData modules'
logic; ``dependencies`` finds and installs missing packages on first use (never torch, numpy,
SimpleITK or vtk). ``slicer`` is imported only inside
functions, so this package imports in plain Python; the tests run it on slicer-core.
"""
