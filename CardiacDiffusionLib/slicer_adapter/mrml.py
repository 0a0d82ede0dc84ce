"""MRML nodes <-> SimpleITK images, label maps, models, tables and markups.

Every function takes the scene explicitly and imports ``slicer`` only when called, so this module
imports in plain Python and runs unchanged in Slicer and on the ``slicer-core`` wheel (no Qt).
Only storage nodes and logic classes are used: ``slicer.util.loadVolume`` & co. need Qt.

Geometry: SimpleITK images are in LPS, MRML in RAS; ``RAS = diag(-1, -1, 1) LPS``. A node under
a linear parent transform is read in world coordinates; a non-linear one must be hardened first.
Inputs are never modified: results are new nodes (or the ``node=`` given to fill).
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..labels import MR_LABEL_COLORS, MR_LABEL_DESCRIPTIONS, MR_LABELS

#: LPS <-> RAS (its own inverse)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
BINARY_LABELMAP = "Binary labelmap"
CLOSED_SURFACE = "Closed surface"
#: colour tables tried in order for model scalars; the file-based ones are absent in slicer-core
DEFAULT_SCALAR_COLORS = ("vtkMRMLColorTableNodeFileViridis.txt", "vtkMRMLColorTableNodeRainbow")


def _slicer():
    import slicer

    if not hasattr(slicer, "vtkMRMLScene"):
        raise ImportError(
            f"the 'slicer' module at {getattr(slicer, '__file__', '?')} is not 3D Slicer's "
            "(install slicer-core, and uninstall the unrelated PyPI package 'slicer')"
        )
    return slicer


def headless_scene():
    """A new scene with the application, colour, segmentation and sequence logics Slicer would set up.

    For plain Python with slicer-core (tests, batch runs outside Slicer). The segmentations logic
    must be given the scene before any labelmap -> surface conversion, or conversions silently
    yield empty surfaces.
    """
    from vtkmodules.vtkCommonCore import vtkCollection

    slicer = _slicer()
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.GetColorLogic().SetMRMLScene(scene)
    app_logic.GetColorLogic().AddDefaultColorNodes()
    app_logic.SetSliceLogics(vtkCollection())
    app_logic.SetViewLogics(vtkCollection())
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(scene)
    segmentations.SetMRMLApplicationLogic(app_logic)
    app_logic.SetModuleLogic("Segmentations", segmentations)
    sequences = slicer.vtkSlicerSequencesLogic()
    sequences.SetMRMLScene(scene)
    scene.logics = (app_logic, segmentations, sequences)  # keep the logics alive with the scene
    return scene


# ---- matrices -------------------------------------------------------------------------------
def _vtk_matrix(array: np.ndarray):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def _numpy_matrix(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijk_to_ras(image: sitk.Image) -> np.ndarray:
    """4x4 IJK-to-RAS matrix of a 3D SimpleITK image (index 0 at voxel centre 0, as in MRML)."""
    if image.GetDimension() != 3:
        raise InputError(f"expected a 3D image, got {image.GetDimension()}D; give 2D planes as size (x, y, 1)")
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin())
    return matrix


def geometry_from_ijk_to_ras(matrix: np.ndarray, name: str = "volume") -> tuple[tuple, tuple, tuple]:
    """``(origin, spacing, direction)`` in LPS for SimpleITK from a 4x4 IJK-to-RAS matrix."""
    lps = LPS_TO_RAS @ np.asarray(matrix, float)[:3, :]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    if np.any(spacing < 1e-12):
        raise InputError(f"{name}: its IJK-to-RAS matrix has a zero spacing")
    direction = lps[:, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-5):
        raise InputError(f"{name}: its geometry is sheared (non-orthogonal axes); resample it first")
    return tuple(lps[:, 3].tolist()), tuple(spacing.tolist()), tuple(direction.flatten().tolist())


def _to_world(node, name: str) -> np.ndarray:
    """4x4 node-to-world matrix (identity without a parent transform)."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputError(f"{name}: is under a non-linear transform; harden the transform (Transforms module) first")
    import vtk

    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return _numpy_matrix(matrix)


# ---- images ---------------------------------------------------------------------------------
def _vtk_image_from_array(array: np.ndarray, image=None):
    """vtkImageData (origin 0, spacing 1) holding a (z, y, x) array; a deep copy."""
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    if image is None:
        image = vtk.vtkImageData()
    if array.dtype == bool:
        array = array.astype(np.uint8)
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    return image


def _sitk_from_vtk(image_data, ijk_to_ras_matrix: np.ndarray, name: str) -> sitk.Image:
    from vtk.util.numpy_support import vtk_to_numpy

    if image_data is None or image_data.GetPointData().GetScalars() is None:
        raise InputError(f"{name}: holds no image data")
    scalars = image_data.GetPointData().GetScalars()
    if scalars.GetNumberOfComponents() != 1:
        raise InputError(f"{name}: has {scalars.GetNumberOfComponents()} components; give a scalar volume")
    extent = image_data.GetExtent()
    dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    array = vtk_to_numpy(scalars).reshape(dims[2], dims[1], dims[0]).copy()
    start = np.array([extent[0], extent[2], extent[4], 1.0])
    matrix = np.array(ijk_to_ras_matrix, float)
    matrix[:, 3] = matrix @ start  # the first stored voxel is the SimpleITK origin
    origin, spacing, direction = geometry_from_ijk_to_ras(matrix, name)
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def volume_node_from_image(scene, image: sitk.Image, name: str = "volume", labelmap: bool = False, node=None):
    """A new scalar (or labelmap) volume node holding ``image``, or fill the given ``node``."""
    _slicer()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name}: vector images are not supported; give a scalar image")
    matrix = ijk_to_ras(image)
    if node is not None and not node.IsA("vtkMRMLScalarVolumeNode"):  # refused before anything is changed
        raise InputError(f"node '{node.GetName()}': is a {node.GetClassName()}; give a scalar volume node to fill, or none")
    if node is None:
        node_class = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
        node = scene.AddNewNodeByClass(node_class, scene.GenerateUniqueName(name))
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    directions = np.eye(4)
    directions[:3, :3] = matrix[:3, :3] / spacing
    node.SetIJKToRASDirectionMatrix(_vtk_matrix(directions))
    node.SetSpacing(*spacing.tolist())
    node.SetOrigin(*matrix[:3, 3].tolist())
    node.SetAndObserveImageData(_vtk_image_from_array(sitk.GetArrayFromImage(image)))
    if node.GetScene() is not None and node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    if not node.IsA("vtkMRMLLabelMapVolumeNode") and node.GetDisplayNode() is not None:
        node.GetDisplayNode().AutoWindowLevelOn()
    return node


def _get_ijk_to_ras(node):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return matrix


def image_from_volume_node(node) -> sitk.Image:
    """The volume (scalar or labelmap) as a SimpleITK image in LPS, world geometry."""
    check_volume_node(node)
    name = f"volume node {node.GetName()!r}"
    matrix = _numpy_matrix(_get_ijk_to_ras(node))
    return _sitk_from_vtk(node.GetImageData(), _to_world(node, name) @ matrix, name)


def _detached_volume(node):
    """A volume node outside any scene with ``node``'s world geometry (for writing a hardened copy)."""
    slicer = _slicer()
    labelmap = node.IsA("vtkMRMLLabelMapVolumeNode")
    copy = slicer.vtkMRMLLabelMapVolumeNode() if labelmap else slicer.vtkMRMLScalarVolumeNode()
    copy.SetName(node.GetName())
    world = _to_world(node, f"volume node {node.GetName()!r}") @ _numpy_matrix(_get_ijk_to_ras(node))
    copy.SetIJKToRASMatrix(_vtk_matrix(world))
    copy.SetAndObserveImageData(node.GetImageData())
    return copy


def check_volume_node(node) -> None:
    """An InputError unless ``node`` is a volume node holding image data (not a model, markups or an empty node)."""
    if not node.IsA("vtkMRMLVolumeNode"):
        raise InputError(f"node '{node.GetName()}': is a {node.GetClassName()}, not a volume; choose a volume node")
    image = node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None or image.GetNumberOfPoints() == 0:
        raise InputError(f"node '{node.GetName()}': holds no image data; choose a volume with voxels (or load it again)")


def save_volume(node, path, compress: bool = True) -> None:
    """Write a volume node with a storage node (NRRD/NIfTI/MHA by extension); parent transform applied."""
    slicer = _slicer()
    check_volume_node(node)
    if node.GetParentTransformNode() is not None:
        node = _detached_volume(node)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(bool(compress))
    if not storage.WriteData(node):
        raise InputError(f"volume node {node.GetName()!r}: could not be written to {path}")


def load_volume(scene, path, name: str | None = None, labelmap: bool = False):
    """Read a volume file into a new node with a storage node (no Qt IO manager needed)."""
    slicer = _slicer()
    from pathlib import Path

    node_class = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(node_class, scene.GenerateUniqueName(name or Path(path).name.split(".")[0]))
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    # one file only: otherwise lax_2ch/3ch/4ch.nii.gz in one folder are read as a numbered series
    storage.SetSingleFile(True)
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise InputError(f"{path}: could not be read as a volume")
    node.CreateDefaultDisplayNodes()
    return node


# ---- segmentations --------------------------------------------------------------------------
def _oriented_image(image: sitk.Image, with_voxels: bool = True):
    """vtkOrientedImageData (uint8) of ``image``; only its geometry when not ``with_voxels``."""
    slicer = _slicer()
    oriented = slicer.vtkOrientedImageData()
    if with_voxels:
        _vtk_image_from_array(sitk.GetArrayFromImage(image).astype(np.uint8), oriented)
    else:
        oriented.SetDimensions(*image.GetSize())
    oriented.SetImageToWorldMatrix(_vtk_matrix(ijk_to_ras(image)))
    return oriented


def segmentation_from_labels(
    scene,
    labels: sitk.Image,
    name: str = "segmentation",
    label_names: dict[int, str] = MR_LABELS,
    descriptions: dict[str, str] = MR_LABEL_DESCRIPTIONS,
    colors: dict[str, tuple[float, float, float]] = MR_LABEL_COLORS,
    reference_volume=None,
    surfaces: bool = True,
    node=None,
):
    """A segmentation node with one named, coloured segment per label value present in ``labels``.

    Segment names are ``descriptions[label_names[value]]`` (e.g. "LV myocardium"); closed surfaces
    (3D) are built when ``surfaces``. A given ``node`` has its segments replaced.
    """
    slicer = _slicer()
    array = sitk.GetArrayFromImage(labels)
    values = [int(v) for v in np.unique(array) if v != 0]
    unknown = sorted(set(values) - set(label_names))
    if unknown:
        raise InputError(f"{name}: unknown label values {unknown} (known {sorted(label_names)})")
    if node is not None and not node.IsA("vtkMRMLSegmentationNode"):  # refused before anything is changed
        raise InputError(f"node '{node.GetName()}': is a {node.GetClassName()}; give a segmentation node to fill, or none")
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    node.GetSegmentation().RemoveAllSegments()
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    oriented = _oriented_image(labels)
    if reference_volume is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    else:  # the labels' own grid, so a LAX plane segmentation keeps its plane
        converter = slicer.vtkSegmentationConverter
        node.GetSegmentation().SetConversionParameter(
            converter.GetReferenceImageGeometryParameterName(), converter.SerializeImageGeometry(oriented)
        )
    before = set(node.GetSegmentation().GetSegmentIDs())
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if values and not logic.ImportLabelmapToSegmentationNode(oriented, node, "label", ""):
        raise InputError(f"{name}: the label map could not be imported into a segmentation")
    segmentation = node.GetSegmentation()
    for segment_id in [s for s in segmentation.GetSegmentIDs() if s not in before]:
        segment = segmentation.GetSegment(segment_id)
        short = label_names[int(segment.GetLabelValue())]
        segment.SetName(descriptions.get(short, short))
        segment.SetColor(*colors.get(short, (0.5, 0.5, 0.5)))
        segment.SetNameAutoGenerated(False)  # chosen, as Slicer marks them: a terminology pick must not rename
        segment.SetColorAutoGenerated(False)  # or recolour the segment
    if surfaces and values:
        node.CreateClosedSurfaceRepresentation()
    return node


def _segment_values(segmentation, name: str, label_values: dict[str, int] | None) -> dict[str, int]:
    """Segment ID -> output label value, matched by segment name (short or long, any case)."""
    if label_values is None:
        label_values = {}
        for value, short in MR_LABELS.items():
            label_values[short] = value
            label_values[MR_LABEL_DESCRIPTIONS[short]] = value
    lookup = {k.lower(): v for k, v in label_values.items()}
    result, unmatched = {}, []
    for segment_id in segmentation.GetSegmentIDs():
        segment_name = segmentation.GetSegment(segment_id).GetName()
        if segment_name.lower() in lookup:
            result[segment_id] = lookup[segment_name.lower()]
        else:
            unmatched.append(segment_name)
    if not result:
        raise InputError(
            f"{name}: no segment named like {sorted(label_values)} (found {unmatched}); "
            "rename the segments (e.g. 'LV cavity', 'LV myocardium', 'RV cavity')"
        )
    return result


def labels_from_segmentation(
    segmentation_node, reference: sitk.Image, label_values: dict[str, int] | None = None
) -> sitk.Image:
    """Label image on ``reference``'s grid: each segment (matched by name) gets its label value.

    Segments are resampled (nearest neighbour) from their own labelmap geometry; later segments
    overwrite earlier ones where they overlap. Unmatched segments are left out.
    """
    slicer = _slicer()
    name = f"segmentation {segmentation_node.GetName()!r}"
    values = _segment_values(segmentation_node.GetSegmentation(), name, label_values)
    source, world = segmentation_node, _to_world(segmentation_node, name)
    if not segmentation_node.GetSegmentation().ContainsRepresentation(BINARY_LABELMAP):
        # convert a detached copy: the input node is never modified; on the reference grid in the node's own
        # coordinates (``reference`` is in world ones: a parent transform moves the result back onto it)
        source = slicer.vtkMRMLSegmentationNode()
        source.GetSegmentation().DeepCopy(segmentation_node.GetSegmentation())
        grid = _oriented_image(reference, False)
        grid.SetImageToWorldMatrix(_vtk_matrix(np.linalg.inv(world) @ ijk_to_ras(reference)))
        geometry = slicer.vtkSegmentationConverter.SerializeImageGeometry(grid)
        source.GetSegmentation().SetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(), geometry
        )
        if not source.GetSegmentation().CreateRepresentation(BINARY_LABELMAP):
            raise InputError(f"{name}: could not be converted to a binary labelmap")
    import vtk

    out = np.zeros(sitk.GetArrayFromImage(reference).shape, dtype=np.uint8)
    for segment_id, value in values.items():
        oriented = slicer.vtkOrientedImageData()
        segment = source.GetSegmentation().GetSegment(segment_id)
        representation = segment.GetRepresentation(BINARY_LABELMAP)
        if representation is None or representation.IsEmpty():
            continue
        oriented.DeepCopy(representation)
        matrix = vtk.vtkMatrix4x4()
        oriented.GetImageToWorldMatrix(matrix)
        image = _sitk_from_vtk(oriented, world @ _numpy_matrix(matrix), name)
        mask = sitk.GetArrayFromImage(image) == segment.GetLabelValue()
        mask_image = sitk.GetImageFromArray(mask.astype(np.uint8))
        mask_image.CopyInformation(image)
        resampled = sitk.Resample(mask_image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        out[sitk.GetArrayFromImage(resampled) > 0] = value
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(reference)
    return result


# ---- models ---------------------------------------------------------------------------------
def scalar_color_node(scene, preferred: str | None = None):
    """The first colour node found among ``preferred`` and the defaults; our own viridis if none."""
    slicer = _slicer()
    for node_id in ((preferred,) if preferred else ()) + DEFAULT_SCALAR_COLORS:
        node = scene.GetNodeByID(node_id)
        if node is not None:
            return node
    name = "CardiacDiffusion viridis"
    existing = scene.GetFirstNodeByName(name)
    if existing is not None:
        return existing
    from matplotlib import colormaps

    colors = colormaps["viridis"](np.linspace(0.0, 1.0, 256))
    node = slicer.vtkMRMLColorTableNode()
    node.SetName(name)
    node.SetTypeToUser()
    node.SetNumberOfColors(len(colors))
    for index, (r, g, b, a) in enumerate(colors):
        node.SetColor(index, float(r), float(g), float(b), float(a))
    node.SetNamesInitialised(True)
    node.SetHideFromEditors(False)
    return scene.AddNode(node)


def model_from_polydata(
    scene, polydata, name: str = "model", scalars: str | None = None, color_node_id: str | None = None,
    scalar_range: tuple[float, float] | None = None,
):  # fmt: skip
    """A model node holding a copy of ``polydata``; its point array ``scalars`` shown with a colour table."""
    import vtk

    copy = vtk.vtkPolyData()
    copy.DeepCopy(polydata)
    node = scene.AddNewNodeByClass("vtkMRMLModelNode", scene.GenerateUniqueName(name))
    node.SetAndObservePolyData(copy)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if scalars is not None:
        array = copy.GetPointData().GetArray(scalars)
        if array is None:
            names = [copy.GetPointData().GetArrayName(i) for i in range(copy.GetPointData().GetNumberOfArrays())]
            scene.RemoveNode(node)
            raise InputError(f"{name}: no point array {scalars!r} (has {names})")
        display.SetActiveScalar(scalars, vtk.vtkAssignAttribute.POINT_DATA)
        display.SetAndObserveColorNodeID(scalar_color_node(scene, color_node_id).GetID())
        if scalar_range is None:
            display.SetScalarRangeFlag(display.UseDataScalarRange)
        else:
            display.SetScalarRangeFlag(display.UseManualScalarRange)
            display.SetScalarRange(*scalar_range)
        display.ScalarVisibilityOn()
    return node


# ---- tables ---------------------------------------------------------------------------------
def table_from_dict(scene, rows: dict[str, dict[str, float | None]], name: str = "table", row_header: str = "name"):
    """A table node: first column ``row_header`` (the row keys), then one numeric column per key.

    Missing or ``None`` values are stored as NaN.
    """
    import vtk

    columns: list[str] = []
    for row in rows.values():
        columns += [c for c in row if c not in columns]
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    table = node.GetTable()
    header = vtk.vtkStringArray()
    header.SetName(row_header)
    for key in rows:
        header.InsertNextValue(str(key))
    table.AddColumn(header)
    for column in columns:
        array = vtk.vtkDoubleArray()
        array.SetName(column)
        for row in rows.values():
            value = row.get(column)
            array.InsertNextValue(math.nan if value is None else float(value))
        table.AddColumn(array)
    node.Modified()
    return node


def dict_from_table(node) -> dict[str, dict[str, float | None]]:
    """Inverse of :func:`table_from_dict` (NaN back to ``None``)."""
    table = node.GetTable()
    rows: dict[str, dict[str, float | None]] = {}
    header = table.GetColumn(0)
    for r in range(table.GetNumberOfRows()):
        row = {}
        for c in range(1, table.GetNumberOfColumns()):
            value = float(table.GetValue(r, c).ToDouble())
            row[table.GetColumnName(c)] = None if math.isnan(value) else value
        rows[str(header.GetValue(r))] = row
    return rows


# ---- markups --------------------------------------------------------------------------------
def points_from_markups(node) -> np.ndarray:
    """``(n, 3)`` LPS world positions of a markups node's control points (e.g. RV insertion points)."""
    points = np.zeros((node.GetNumberOfControlPoints(), 3))
    ras = [0.0, 0.0, 0.0]
    for i in range(len(points)):
        node.GetNthControlPointPositionWorld(i, ras)
        points[i] = LPS_TO_RAS @ np.array(ras)
    return points


def markups_from_points(scene, points_lps: np.ndarray, name: str = "points", labels: list[str] | None = None):
    """A new fiducial markups node with ``points_lps`` (n, 3) as control points."""
    points = np.asarray(points_lps, float).reshape(-1, 3)
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", scene.GenerateUniqueName(name))
    for i, point in enumerate(points):
        index = node.AddControlPoint(*(LPS_TO_RAS @ point).tolist())
        if labels:
            node.SetNthControlPointLabel(index, labels[i])
    return node
