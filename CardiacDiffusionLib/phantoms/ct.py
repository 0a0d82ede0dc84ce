"""Whole-heart CT phantom: 8 labels (CT convention of :mod:`labels`) and a CT image in Hounsfield units.

The anatomy is built from simple analytic shapes in patient LPS millimetres (+x left, +y posterior,
+z superior): a truncated prolate-ellipsoid LV cavity inside a myocardium shell, an RV crescent
wrapped around the septum (anterior-right), the LA posterior-superior on the LV base with its
appendage (LAA) off its left-anterior side, the RA on the right, an aorta leaving the LV base, rising
and arching back-left into the descending aorta, and a pulmonary artery leaving the RV outflow,
rising up-left-back and splitting into left and right branches. A thin annulus (MYO label) closes
the LV base except at the mitral (to LA) and aortic (to AO) valves, so the LV cavity touches only MYO,
LA and AO. The thin RV free wall is drawn in myocardium HU but left unlabelled, as in whole-heart
segmentation data sets. Each seed draws sizes, positions, small rotations and a smooth random warp;
the HU values and the noise come from the same seed.

Label volumes in the truth are counted on the label image (voxel count x voxel volume), so they
match what a segmentation metric sees. The default field of view is a 160 mm cube whatever ``size``
is, so the anatomy keeps its real size: 32^3 -> 5 mm, 64^3 -> 2.5 mm, 128^3 -> 1.25 mm voxels.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import InputError
from ..labels import CT_LABELS

#: Default field of view (mm, each axis) when no spacing is given.
FOV_MM = 160.0
#: Label values by short name (CT convention).
LA, LV, RA, RV, MYO, AO, PA, LAA = 1, 2, 3, 4, 5, 6, 7, 8
#: Ranges the seeded HU values are drawn from (low, high).
HU_CONTRAST = {
    "left_blood": (350.0, 450.0),  # LV, LA, LAA, AO: arterial phase
    "right_blood": (280.0, 380.0),  # RA, RV, PA
    "myocardium": (100.0, 150.0),
}
HU_NATIVE = {"left_blood": (35.0, 45.0), "right_blood": (35.0, 45.0), "myocardium": (48.0, 55.0)}
HU_FIXED = {"fat": -100.0, "lung": -800.0, "soft_tissue": 40.0, "cancellous_bone": 350.0, "cortical_bone": 900.0}


def make_ct_phantom(
    seed: int = 0,
    size: int | tuple[int, int, int] = 64,
    spacing: float | tuple[float, float, float] | None = None,
    contrast: bool = True,
    noise_hu: float = 15.0,
) -> tuple[sitk.Image, sitk.Image, dict]:
    """Return ``(image, labels, truth)`` for one seeded whole-heart CT.

    ``image`` is Int16 HU, ``labels`` UInt8 (1 LA, 2 LV, 3 RA, 4 RV, 5 MYO, 6 AO, 7 PA, 8 LAA), both on
    the same LPS grid (identity direction) centred on the heart. ``spacing`` defaults to a 160 mm field of
    view; a smaller field of view crops the anatomy. ``truth`` is JSON-able (volumes in ml, centroids in
    LPS mm, nominal HU per tissue, the LV frame for attaching an activation map).
    """
    shape_xyz = _size3(size)
    if spacing is None:
        spacing_xyz = tuple(FOV_MM / n for n in shape_xyz)
    else:
        spacing_xyz = tuple(float(s) for s in np.broadcast_to(np.asarray(spacing, float), (3,)))
        if min(spacing_xyz) <= 0:
            raise InputError(f"CT phantom: spacing must be positive, got {spacing}; give mm per voxel, e.g. 1.5")
    if noise_hu < 0:
        raise InputError(f"CT phantom: noise_hu must be >= 0, got {noise_hu}")
    rng = np.random.default_rng(seed)
    anatomy = _draw_anatomy(rng)
    hu = _draw_hu(rng, contrast)

    # Grid in LPS mm, arrays in SimpleITK (z, y, x) order. The FOV centre is the heart's chosen centre.
    origin = anatomy["fov_center"] - 0.5 * (np.array(shape_xyz) - 1) * np.array(spacing_xyz)
    axes = [origin[i] + spacing_xyz[i] * np.arange(shape_xyz[i], dtype=np.float32) for i in range(3)]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    q = _to_heart(anatomy, x, y, z)  # heart coordinates with the seeded rotation and warp applied

    labels = _label_volume(anatomy, q, _Boxes(anatomy, origin, spacing_xyz, shape_xyz))
    image = _hu_volume(anatomy, hu, labels, q, spacing_xyz, rng, noise_hu)

    def to_sitk(array: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(array)
        img.SetOrigin(tuple(float(o) for o in origin))
        img.SetSpacing(spacing_xyz)
        img.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        return img

    label_img = to_sitk(labels)
    truth = _truth(seed, anatomy, hu, labels, origin, spacing_xyz, contrast, noise_hu)
    return to_sitk(image), label_img, truth


# ---- anatomy -------------------------------------------------------------------------------------
def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """Small random rotation (each Euler angle uniform in +-max_deg)."""
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _draw_anatomy(rng: np.random.Generator) -> dict:
    """All shape parameters, in heart coordinates: LPS axes, origin at the LV base (mitral plane) centre."""
    u = lambda lo, hi, n=None: rng.uniform(lo, hi, n)  # noqa: E731
    scale = u(0.95, 1.05)
    # LV long axis points to the apex: left, anterior, inferior; tilted a few degrees per seed.
    long_axis = _rotation(rng, 8.0) @ _unit([0.61, -0.61, -0.50])
    septal = _unit([-0.8, -0.5, 0.0] - np.dot([-0.8, -0.5, 0.0], long_axis) * long_axis)  # towards the RV
    inferior = np.cross(long_axis, septal)
    frame = np.stack([long_axis, septal, inferior], axis=1)  # columns: LV ellipsoid axes

    a_cav, b_cav, c_cav = scale * u(50, 58), scale * u(25, 29), scale * u(26, 30)
    wall = scale * u(8.0, 10.0)
    trunc = scale * u(13, 17)  # base plane lies this far from the ellipsoid centre, towards the base
    lid = u(3.0, 5.0)  # fibrous mitral-aortic annulus: myocardium label closes the base beyond the cavity
    lv_center = trunc * long_axis
    lv = {"center": lv_center, "frame": frame, "radii": np.array([a_cav, b_cav, c_cav])}
    myo = {"center": lv_center, "frame": frame, "radii": np.array([a_cav + 0.85 * wall, b_cav + wall, c_cav + wall])}

    jit = lambda mm: rng.uniform(-mm, mm, 3)  # noqa: E731
    # RV crescent around the septum (anterior-right), shorter than the LV; atria behind and right.
    rv_center = 10 * long_axis + (b_cav + 0.5 * wall + 3) * septal + jit(3)
    rv = {"center": rv_center, "frame": frame, "radii": scale * np.array([u(40, 46), u(19, 23), u(36, 42)])}
    # LA posterior-superior on the LV base, RA to the right, LAA a lobe off the LA's left-anterior-superior side.
    la = {"center": scale * np.array([-2.0, 28.0, 12.0]) + jit(3), "frame": _rotation(rng, 10.0),
          "radii": scale * np.array([u(28, 33), u(18, 21), u(18, 21)])}
    ra = {"center": scale * np.array([-46.0, 6.0, 10.0]) + jit(3), "frame": _rotation(rng, 10.0),
          "radii": scale * np.array([u(21, 25), u(22, 26), u(26, 31)])}
    laa_dir = _unit(np.array([0.55, -0.60, 0.55]) + rng.uniform(-0.1, 0.1, 3))
    side = _unit(np.cross(laa_dir, [0.0, 0.0, 1.0]))
    laa_frame = np.stack([laa_dir, side, np.cross(laa_dir, side)], axis=1)
    laa = {"center": la["center"] + la["radii"][0] * 0.9 * _unit([0.75, -0.35, 0.55]) + 10 * laa_dir,
           "frame": laa_frame, "radii": scale * np.array([u(16, 20), u(9, 11), u(8, 10)])}

    # Aorta: root in the LV outflow (antero-septal base), ascending, arch back-left, descending past the FOV.
    anterior = -inferior
    ao_root = 10 * septal + 8 * anterior
    ao_pts = ao_root + np.cumsum(
        [[0, 0, 0], [-10, -8, 40], [4, 15, 22], [14, 25, 5], [12, 20, -15], [4, 10, -40], [0, 0, -110]], axis=0
    ) * scale
    ao_pts = np.vstack([ao_root + 6 * long_axis, ao_pts])  # start inside the LV outflow tract
    ao_pts[1:] += jit(3)
    ao_r = scale * np.array([13.5, 13.5, 14.0, 13.0, 12.5, 12.0, 11.0, 11.0]) * u(0.9, 1.1)
    ao = {"points": _smooth_path(ao_pts), "radii": _smooth_path(ao_r[:, None])[:, 0]}

    mitral = -6 * septal + 6 * inferior  # posterior-lateral of the aortic root
    funnel = {"points": np.array([mitral + 3 * long_axis, la["center"]]), "radii": scale * np.full(2, u(13, 16))}

    # Pulmonary artery: from the RV outflow (anterior, left of the aortic root) up-left-back, then branches.
    pa_root = np.array([2.0, -28.0, 18.0]) * scale + jit(3)
    bif = pa_root + np.array([12.0, 16.0, 34.0]) * scale
    pa_r = scale * u(11, 13)
    pa_trunk = {"points": np.array([pa_root - 8 * np.array([0, 0, 1.0]), pa_root, bif]), "radii": np.full(3, pa_r)}
    lpa = {"points": np.array([bif, bif + scale * np.array([18.0, 25.0, 2.0])]), "radii": np.full(2, 0.75 * pa_r)}
    rpa_pts = bif + scale * np.array([[0.0, 0.0, 0.0], [-30.0, 30.0, -2.0], [-52.0, 38.0, -6.0]])  # under the arch
    rpa = {"points": rpa_pts, "radii": np.full(3, 0.75 * pa_r)}

    # Body around the heart (heart coordinates): spine behind, sternum in front.
    spine = {"center_xy": np.array([-5.0, 92.0]) + rng.uniform(-3, 3, 2), "radius": u(15, 18)}
    sternum_y = -62.0 + u(-3, 3)
    warp = [(rng.normal(size=3) * u(1.0, 2.0), _unit(rng.normal(size=3)) * 2 * np.pi / u(80, 160), u(0, 2 * np.pi))
            for _ in range(3)]
    return {
        "lv": lv, "myo": myo, "lid": lid, "mitral_funnel": funnel, "rv": rv, "la": la, "ra": ra, "laa": laa, "ao": ao,
        "pa": [pa_trunk, lpa, rpa], "spine": spine, "sternum_y": sternum_y, "warp": warp,
        "rotation": _rotation(rng, 5.0), "fov_center": np.array([-2.0, 3.0, 15.0]) + jit(3),
        "long_axis": long_axis, "septal": septal, "inferior": inferior, "wall": wall,
        "apex_cavity": lv_center + a_cav * long_axis,
    }


def _smooth_path(points: np.ndarray, rounds: int = 2) -> np.ndarray:
    """Refine a polyline with Chaikin corner cutting (keeps both ends): a smooth tube path."""
    p = np.asarray(points, float)
    for _ in range(rounds):
        q = 0.75 * p[:-1] + 0.25 * p[1:]
        r = 0.25 * p[:-1] + 0.75 * p[1:]
        p = np.vstack([p[:1], np.stack([q, r], 1).reshape(-1, p.shape[1]), p[-1:]])
    return p


def _to_heart(anatomy: dict, x, y, z) -> list[np.ndarray]:
    """World LPS grid -> heart coordinates (inverse seeded rotation about the FOV centre + smooth warp)."""
    c = anatomy["fov_center"]
    rel = [x - np.float32(c[0]), y - np.float32(c[1]), z - np.float32(c[2])]
    r = anatomy["rotation"].astype(np.float32)
    q = [r[0, i] * rel[0] + r[1, i] * rel[1] + r[2, i] * rel[2] + np.float32(c[i]) for i in range(3)]
    return _warp(anatomy, q)


class _Boxes:
    """Index boxes (z, y, x slices) that hold a given heart-coordinate box, warp included.

    Tubes are evaluated inside such boxes only: over the whole grid they cost ten times more.
    """

    def __init__(self, anatomy: dict, origin, spacing, shape_xyz) -> None:
        self.anatomy, self.shape = anatomy, shape_xyz
        self.origin, self.spacing = np.asarray(origin), np.asarray(spacing)
        self.margin = sum(np.abs(amp).max() for amp, _, _ in anatomy["warp"]) + 2 * max(spacing)

    def __call__(self, lo, hi) -> tuple[slice, slice, slice]:
        lo, hi = np.asarray(lo) - self.margin, np.asarray(hi) + self.margin
        corners = np.array([[(lo, hi)[(k >> i) & 1][i] for i in range(3)] for k in range(8)])
        idx = (_heart_to_world(self.anatomy, corners.T).T - self.origin) / self.spacing
        first = np.clip(np.floor(idx.min(0)).astype(int), 0, self.shape)
        last = np.clip(np.ceil(idx.max(0)).astype(int) + 1, 0, self.shape)
        return tuple(slice(first[i], last[i]) for i in (2, 1, 0))


def _ellipsoid(q, shape: dict, grow: float = 0.0) -> tuple[np.ndarray, list[np.ndarray]]:
    """(normalised squared radius, local coordinates along the shape's axes)."""
    c, f = shape["center"], shape["frame"].astype(np.float32)
    d = [q[i] - np.float32(c[i]) for i in range(3)]
    local = [f[0, j] * d[0] + f[1, j] * d[1] + f[2, j] * d[2] for j in range(3)]
    rho = sum((local[j] / np.float32(shape["radii"][j] + grow)) ** 2 for j in range(3))
    return rho, local


def _tube(q, tube: dict, boxes: _Boxes) -> np.ndarray:
    """Inside a polyline tube whose radius varies linearly along each segment."""
    inside = np.zeros(q[0].shape, bool)
    pts, radii = tube["points"], tube["radii"]
    for a, b, ra, rb in zip(pts[:-1], pts[1:], radii[:-1], radii[1:]):
        box = boxes(np.minimum(a, b) - max(ra, rb), np.maximum(a, b) + max(ra, rb))
        v = (b - a).astype(np.float32)
        d = [q[i][box] - np.float32(a[i]) for i in range(3)]
        t = np.clip((d[0] * v[0] + d[1] * v[1] + d[2] * v[2]) / np.float32(v @ v), 0, 1)
        dist2 = sum((d[i] - t * v[i]) ** 2 for i in range(3))
        inside[box] |= dist2 < (np.float32(ra) + t * np.float32(rb - ra)) ** 2
    return inside


def _label_volume(anatomy: dict, q, boxes: _Boxes) -> np.ndarray:
    """Paint labels, highest priority first (a voxel keeps the first label it gets)."""
    labels = np.zeros(q[0].shape, np.uint8)

    def paint(mask: np.ndarray, value: int) -> None:
        labels[mask & (labels == 0)] = value

    rho_lv, local_lv = _ellipsoid(q, anatomy["lv"])
    rho_myo, _ = _ellipsoid(q, anatomy["myo"])
    height = local_lv[0] + np.float32(anatomy["lv"]["center"] @ anatomy["long_axis"])  # mm below the base plane
    ao, funnel = _tube(q, anatomy["ao"], boxes), _tube(q, anatomy["mitral_funnel"], boxes)
    paint((rho_lv < 1) & (height >= 0), LV)
    # The valves open the annulus lid: the LV cavity meets only MYO, AO (aortic valve) and LA (mitral valve).
    lid = (rho_lv < 1) & (height < 0) & (height >= -np.float32(anatomy["lid"]))
    paint(ao & lid, AO)
    paint(funnel & lid, LA)
    paint((rho_myo < 1) & (height >= -np.float32(anatomy["lid"])), MYO)
    paint(ao, AO)
    paint(_ellipsoid(q, anatomy["laa"])[0] < 1, LAA)
    paint((_ellipsoid(q, anatomy["la"])[0] < 1) | funnel, LA)
    paint(_ellipsoid(q, anatomy["ra"])[0] < 1, RA)
    paint(_ellipsoid(q, anatomy["rv"])[0] < 1, RV)
    for tube in anatomy["pa"]:
        paint(_tube(q, tube, boxes), PA)
    for value in CT_LABELS:  # drop the odd voxel cut off where shapes meet: one piece per label
        pieces, n = ndimage.label(labels == value)
        if n > 1:
            labels[(pieces > 0) & (pieces != np.argmax(np.bincount(pieces.ravel())[1:]) + 1)] = 0
    return labels


# ---- intensities ---------------------------------------------------------------------------------
def _draw_hu(rng: np.random.Generator, contrast: bool) -> dict:
    table = HU_CONTRAST if contrast else HU_NATIVE
    hu = {k: float(rng.uniform(*v)) for k, v in table.items()}
    hu.update(HU_FIXED)
    hu["lung"] = float(rng.uniform(-850, -750))
    return hu


def _hu_volume(anatomy, hu, labels, q, spacing, rng, noise_hu) -> np.ndarray:
    """Tissue HU map (background tissues, then labelled blood pools and myocardium), smoothed, noisy."""
    img = np.full(labels.shape, hu["lung"], np.float32)
    heart = labels > 0
    # Pericardial / mediastinal fat: a smooth envelope a few mm around the heart and great vessels.
    sigma_vox = [5.0 / s for s in spacing[::-1]]
    img[ndimage.gaussian_filter(heart.astype(np.float32), sigma_vox) > 0.05] = hu["fat"]
    # Posterior mediastinum (aorta, oesophagus) between the heart and the spine.
    sp = anatomy["spine"]
    img[((q[0] - sp["center_xy"][0]) / 32) ** 2 + ((q[1] - sp["center_xy"][1] + 20) / 50) ** 2 < 1] = hu["fat"]
    # Anterior chest wall (muscle) with the sternum, posterior paraspinal muscle and the vertebral body.
    wall_y = anatomy["sternum_y"] + 0.004 * q[0] ** 2
    img[q[1] < wall_y] = hu["soft_tissue"]
    sternum = (np.abs(q[0]) < 14) & (np.abs(q[1] - anatomy["sternum_y"] + 4.5) < 5.5)
    img[sternum] = 0.6 * hu["cortical_bone"]
    r_spine = np.sqrt((q[0] - sp["center_xy"][0]) ** 2 + (q[1] - sp["center_xy"][1]) ** 2)
    img[(q[1] > sp["center_xy"][1] - sp["radius"] + 2) & (np.abs(q[0] - sp["center_xy"][0]) < 45)] = hu["soft_tissue"]
    img[r_spine < sp["radius"]] = hu["cortical_bone"]
    img[r_spine < sp["radius"] - 2.5] = hu["cancellous_bone"]
    # Thin RV free wall (unlabelled, as in whole-heart segmentations) in myocardium HU.
    rv_wall = (_ellipsoid(q, anatomy["rv"], grow=4.0)[0] < 1) & ~heart
    img[rv_wall] = hu["myocardium"]
    lut = np.array([0, hu["left_blood"], hu["left_blood"], hu["right_blood"], hu["right_blood"], hu["myocardium"],
                    hu["left_blood"], hu["right_blood"], hu["left_blood"]], np.float32)
    img[heart] = lut[labels[heart]]
    img = ndimage.gaussian_filter(img, 0.5)  # partial volume
    img += rng.normal(0.0, noise_hu, img.shape).astype(np.float32)
    return np.clip(np.round(img), -1024, 3071).astype(np.int16)


# ---- truth ---------------------------------------------------------------------------------------
def _truth(seed, anatomy, hu, labels, origin, spacing, contrast, noise_hu) -> dict:
    voxel_ml = float(np.prod(spacing)) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=9)
    idx = ndimage.center_of_mass(np.ones_like(labels), labels, list(CT_LABELS))
    centroids = {}
    for value, name in CT_LABELS.items():
        zyx = idx[value - 1]
        centroids[name] = (origin + np.array(zyx[::-1]) * spacing).round(2).tolist() if counts[value] else None
    world = lambda p: _heart_to_world(anatomy, p, unwarp=True)  # noqa: E731
    base, apex = world(np.zeros(3)), world(anatomy["apex_cavity"])
    long_axis = _unit(apex - base)
    septal = world(anatomy["lv"]["center"] + 10 * anatomy["septal"]) - world(anatomy["lv"]["center"])
    septal = _unit(septal - (septal @ long_axis) * long_axis)
    inferior = np.cross(long_axis, septal)
    rv_insertion = 0.5 * septal - np.sqrt(0.75) * inferior  # anterior RV insertion: 60 deg from mid-septum
    blood = {"LA": "left_blood", "LV": "left_blood", "RA": "right_blood", "RV": "right_blood", "MYO": "myocardium",
             "AO": "left_blood", "PA": "right_blood", "LAA": "left_blood"}
    return {
        "seed": int(seed),
        "modality": "CT",
        "contrast": bool(contrast),
        "size_xyz": [int(n) for n in labels.shape[::-1]],
        "spacing_mm": [float(s) for s in spacing],
        "origin_mm": [float(o) for o in origin],
        "label_names": {str(k): v for k, v in CT_LABELS.items()},
        "volumes_ml": {name: round(float(counts[v]) * voxel_ml, 3) for v, name in CT_LABELS.items()},
        "centroids_mm": centroids,
        "hu_nominal": {name: round(hu[blood[name]], 1) for name in CT_LABELS.values()}
        | {k: round(v, 1) for k, v in hu.items() if k in HU_FIXED},
        "noise_hu": float(noise_hu),
        "lv_frame": {
            "base_center_mm": base.round(2).tolist(),  # centre of the LV cavity at the base plane
            "apex_mm": apex.round(2).tolist(),  # endocardial apex
            "long_axis": long_axis.round(4).tolist(),  # base -> apex
            "septal_dir": septal.round(4).tolist(),
            "inferior_dir": inferior.round(4).tolist(),
            "rv_insertion_anterior_dir": rv_insertion.round(4).tolist(),
            "wall_mm": round(float(anatomy["wall"]), 2),
        },
    }


def _warp(anatomy: dict, q: list) -> list:
    for amp, k, phase in anatomy["warp"]:
        s = np.sin(np.float32(k[0]) * q[0] + np.float32(k[1]) * q[1] + np.float32(k[2]) * q[2] + np.float32(phase))
        q = [q[i] + np.float32(amp[i]) * s for i in range(3)]
    return q


def _heart_to_world(anatomy: dict, p: np.ndarray, unwarp: bool = False) -> np.ndarray:
    """Heart coordinates (3, ...) -> world LPS; ``unwarp`` also inverts the smooth warp (fixed point)."""
    c = anatomy["fov_center"]
    p = np.asarray(p, float)
    if unwarp:  # solve p0 + w(p0) = p; w is a small smooth displacement, so the iteration contracts
        p0 = p.copy()
        for _ in range(30):
            p0 = p - (np.array(_warp(anatomy, list(p0))) - p0)
        p = p0
    c = c.reshape((3,) + (1,) * (p.ndim - 1))
    return np.tensordot(anatomy["rotation"], p - c, axes=1) + c


def _size3(size) -> tuple[int, int, int]:
    s = np.broadcast_to(np.asarray(size), (3,))
    if not np.all(s == np.round(s)) or s.min() < 8:
        raise InputError(f"CT phantom: size must be whole numbers >= 8 (one or three), got {size}; e.g. 64")
    return tuple(int(v) for v in s)
