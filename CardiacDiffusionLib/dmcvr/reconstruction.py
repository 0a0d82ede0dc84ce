"""Reconstruction method ``dmcvr`` (registered in :mod:`..reconstruction.baselines` on import).

Any SAX stack gets the training treatment (:mod:`.data`): intensities clipped at the 99th
percentile and min-max scaled per volume, then one crop of the model's size and pixel spacing
around the heart sampled from the acquired grid. The heart centre comes from the given labels,
or from the morphology net (whole field of view for candidates, then crops: :func:`.localise.heart_center`).
The three DMCVR latents of the acquired crops (z_sem, morphology code, DDIM-inverted x_t) are
interpolated at the targets' true positions (uneven gaps work: lerp z_sem and morphology, slerp x_t),
decoded in batches, segmented by the morphology net, and mapped back to the stack's own grid: images on
the input's intensity scale, labels by argmax of the bilinearly upsampled class probabilities. Outside
the crop the image is the linear baseline and the labels the nearest acquired slice's (background without labels). A
structure absent from both acquired neighbours of a target is not labelled there, and one that only one
neighbour holds is labelled only up to half-way to the other.
Acquired positions keep their pixels, and their labels when the user gave labels; a slice left
unlabelled between labelled ones is labelled by the morphology net (with the classes the given labels use).
A slice holding one value (no image: padded or missing) is warned about and left out of the heart
localisation; the net's labels of it are background (it used to invent a heart there, which moved the crop).

The generated slices' class probabilities are blended with a shape prior: ``(1 - w) p_net + w q``,
q = the shape-based interpolation of the acquired slices' labels (the given ones, else the net's own
labels of the acquired slices) as one-hot maps smoothed by a Gaussian of ``SHAPE_PRIOR_SIGMA_PX``
pixels, w = ``shape_prior`` (default ``DEFAULT_SHAPE_PRIOR``; 0 = the network alone, the paper's
rule). The network labels a generated image, which loses detail against a real slice (the same net
on the real dropped slices: MYO Dice 0.897, on generated ones 0.792); the acquired slices' labels
interpolated are the other source, and the blend is better than either (docs/models/dmcvr.md).
With w < 0.5 the prior cannot overrule a confident network.

Roughness guard (``guard``, default ``ROUGHNESS_GUARD``): the slerp of two fully inverted x_T codes that
are not close to independent (angle well below 90 deg: clean, similar neighbours) is a code this small model
decodes into a noisy texture with the wall washed out (MR phantom 0's basal half), which the net then
under-labels. A decoded crop whose mean absolute pixel difference is more than ``guard`` times its acquired
neighbours' (weighted by position) is decoded again from the nearer neighbour's x_T, z_sem and morphology
still interpolated. Those decodes are counted in ``progress(k, total)`` and honour ``cancel``: total then grows
once by their steps, so the fraction drops once; k never decreases and reaches total only at the end (``_StepCount``).

``strength=1`` (the default) is the paper's full inversion to x_T. ``strength`` < 1 inverts only
the first ``strength`` of the diffusion schedule (to x_t with t < strength T, as SDEdit-style
partial inversion): the CPU-trained models up to v0.3 could not decode a clean slice from the slerp
of two fully inverted codes, and a partial code keeps the coarse anatomy while the denoiser
re-creates the details under the interpolated semantic and morphology codes.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy import ndimage

from ..errors import InputError, QualityWarning
from ..geometry.stack import SliceStack, anatomy_says_normal_points_to_apex, normal_points_to_apex, slice_order_warning
from ..models.store import list_models, load_model, model_path
from ..reconstruction.baselines import aligned_arrays, linear, register_method, shape_labels
from ..reconstruction.slice_checks import blank_slices, input_warnings, unlabelled_between
from ..utils.device import keep_freed_memory, resolve_device, run_batched
from .data import CLIP_PERCENTILE, TRAIN_SIZE, TRAIN_SPACING_MM, CropFrame, crop_angle, label_center
from .interpolate import interpolation_plan
from .localise import LOCALISATION_MIN_CONFIDENCE, class_probs, heart_center
from .ddim import ddim_decode, ddim_encode
from .model import DMCVRModel, Latents, from_diffusion_range, to_diffusion_range

#: name of the shipped default model
DEFAULT_MODEL = "dmcvr-acdc-64"
DEFAULT_BATCH = {"cpu": 32, "cuda": 128, "mps": 64}
#: DDIM steps (each way) and the fraction of the diffusion schedule inverted (1 = DMCVR's full
#: inversion to x_T; less = partial inversion, see the module docstring). Chosen for model v0.4 on
#: ACDC 041-060 (training patients; strengths 0.1-1, 10-50 steps, docs/models/dmcvr.md), never on
#: the validation patients. (v0.1-v0.3, trained on CPU only, were best at strength 0.1, 10 steps.)
DEFAULT_STEPS = 25
DEFAULT_STRENGTH = 1.0
#: fewer DDIM steps than this at full inversion (MIN_STEPS x strength at a partial one: shorter steps) lose quality:
#: a QualityWarning, not a refusal (docs/models/dmcvr.md, Steps: ACDC 061-080, MR phantoms 0-3). One step is left
#: alone: it inverts only to t = 0 (no noise; the interpolated crops decoded once) and kept the default's Dice there.
MIN_STEPS = 10
#: weight of the shape prior in generated slices' labels (module docstring), chosen on ACDC 041-060
#: from 0-0.7 with smoothing 0, 1, 2 px (docs/models/dmcvr.md); 0.5 and above lost RV Dice there
DEFAULT_SHAPE_PRIOR = 0.4
#: a smaller field of view cannot show a whole heart (LV + RV span ~100 mm in short axis); the model's crop is 144 mm
MIN_VIEW_MM = 60.0
SHAPE_PRIOR_SIGMA_PX = 1.0
#: a generated crop rougher than this times its acquired neighbours (position-weighted) is decoded again from the
#: nearer neighbour's x_T (z_sem and morphology still interpolated); inf = off. Chosen on ACDC 041-060 and MR phantoms
#: 20-29 (and 20-24 at noise 0.02; 1.1-2.0: the lowest that lost nowhere there; docs/models/dmcvr.md, try_dmcvr_guard.py)
ROUGHNESS_GUARD = 1.2


def default_model_name() -> str:
    """The shipped default, else the first registered DMCVR model; InputError when none is installed."""
    models = [m for m in list_models() if m["workflow"] == "dmcvr"]
    if not models:
        raise InputError(
            "dmcvr: no DMCVR model is installed; train one (cardiac-diffusion train dmcvr --data ACDC --out runs/dmcvr), "
            "register it (cardiac-diffusion models add ...) or pass model=PATH.safetensors"
        )
    names = [m["name"] for m in models]
    return DEFAULT_MODEL if DEFAULT_MODEL in names else names[0]


def load_dmcvr(model: str | None = None, device: str = "cpu") -> tuple[DMCVRModel, int, float]:
    """(model, crop size, pixel spacing mm) of a registered name or a .safetensors path (hash checked when known);
    kept for the next call while the file is unchanged (a model re-registered or re-trained is read again)."""
    name = model or default_model_name()
    path = model_path(name)
    stat = path.stat() if path.is_file() else None
    return _load_dmcvr(name, device, str(path), stat and (stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=2)
def _load_dmcvr(name: str, device: str, path: str, stamp: tuple | None) -> tuple[DMCVRModel, int, float]:
    loaded = load_model(name, device=device)
    if loaded.architecture != "dmcvr":
        raise InputError(f"model {name}: architecture {loaded.architecture!r} is not a DMCVR model")
    entry_input = (loaded.entry or {}).get("input") or loaded.meta.get("input") or {}
    size = int((entry_input.get("size") or [TRAIN_SIZE])[0])
    spacing = float((entry_input.get("spacing_mm") or [TRAIN_SPACING_MM])[0])
    # on the CPU, channels-last weights: oneDNN's convolutions skip a layout reorder per call (12-slice bench stack
    # on 2 threads: 22.1 -> 16.4 s; the same labels, images within 3e-5). Not measured on CUDA: left as it was there
    module = loaded.module.to(memory_format=torch.channels_last) if torch.device(device).type == "cpu" else loaded.module
    return module, size, spacing


load_dmcvr.cache_clear = _load_dmcvr.cache_clear  # type: ignore[attr-defined]


def normalisation(pixels: np.ndarray, percentile: float = CLIP_PERCENTILE) -> tuple[float, float]:
    """(lo, hi) of the training treatment: x -> (min(x, hi) - lo) / (hi - lo)."""
    if not np.all(np.isfinite(pixels)):
        raise InputError("SAX stack: holds NaN or infinite intensities; fix or mask them first")
    hi = float(np.percentile(pixels, percentile))
    lo = float(np.minimum(pixels, hi).min())
    if hi - lo <= 1e-8:
        raise InputError("SAX stack: the image is constant; nothing to reconstruct")
    return lo, hi


def _fill(
    model: DMCVRModel, crops: torch.Tensor, positions: np.ndarray, targets: np.ndarray, steps: int, strength: float,
    batch_size: int, progress: Callable[[int, int], None] | None, cancel: Callable[[], bool] | None,
    guard: float = np.inf,
) -> torch.Tensor:  # fmt: skip
    """Crops at the targets: acquired ones copied, the others decoded from interpolated latents, in batches
    (``guard``: :data:`ROUGHNESS_GUARD`)."""
    lo, hi, w = interpolation_plan(positions, targets)
    todo = np.nonzero(lo != hi)[0]
    out = crops[torch.as_tensor(lo)].clone()
    if len(todo) == 0:  # every target is an acquired slice: nothing to decode, said done
        _StepCount(progress, 1).finish()
        return out
    need = np.unique(np.concatenate([lo[todo], hi[todo]]))
    row = {int(s): k for k, s in enumerate(need)}
    count = _StepCount(progress, steps * (int(np.ceil(len(need) / batch_size)) + int(np.ceil(len(todo) / batch_size))))
    parts = run_batched(lambda x: _encode_flat(model, x, steps, strength, count.tick, cancel), crops[torch.as_tensor(need)],
                        batch_size, model.device)  # fmt: skip
    lat = _unflatten(model, parts, crops.shape[-2:])
    ia = torch.as_tensor([row[int(s)] for s in lo[todo]])
    ib = torch.as_tensor([row[int(s)] for s in hi[todo]])
    wt = torch.as_tensor(w[todo], dtype=torch.float32)
    mixed = model.interpolate(Latents(*(t[ia] for t in lat)), Latents(*(t[ib] for t in lat)), wt)
    flat = torch.cat([t.flatten(1) for t in mixed], 1)
    decoded = run_batched(lambda f: _decode(model, _unflatten(model, f, crops.shape[-2:]), steps, strength, count.tick, cancel),
                          flat, batch_size, model.device)  # fmt: skip
    if np.isfinite(guard):  # a decode much rougher than its neighbours: again from the nearer neighbour's x_T
        redo = np.nonzero(roughness_ratio(decoded, crops[torch.as_tensor(lo[todo])], crops[torch.as_tensor(hi[todo])], w[todo]) > guard)[0]
        if len(redo):
            count.grow(steps * int(np.ceil(len(redo) / batch_size)))
            near = torch.as_tensor(np.where(w[todo][redo] <= 0.5, ia[redo].numpy(), ib[redo].numpy()))
            again = Latents(mixed.z_sem[redo], mixed.morph[redo], lat.x_T[near])
            flat = torch.cat([t.flatten(1) for t in again], 1)
            decoded[torch.as_tensor(redo)] = run_batched(
                lambda f: _decode(model, _unflatten(model, f, crops.shape[-2:]), steps, strength, count.tick, cancel),
                flat, batch_size, model.device)  # fmt: skip
    count.finish()
    out[torch.as_tensor(todo)] = decoded
    return out


class _StepCount:
    """``progress(k, total)`` of :func:`_fill`: k = DDIM steps done over all encode, decode and re-decode batches,
    never decreasing. ``total`` is the planned encode + decode steps; when the roughness guard re-decodes crops it
    grows once by their steps (:meth:`grow`; the fraction k / total then drops once, e.g. 99 % -> 67 %). k == total
    is said once, when all is done (:meth:`finish`): the last decode step is said only after the guard decided."""

    def __init__(self, progress: Callable[[int, int], None] | None, total: int):
        self.progress, self.total, self.base, self.shown = progress, total, 0, 0

    def tick(self, k: int, n: int) -> None:
        """After step k of n of one batch's DDIM loop (a batch retried after out-of-memory repeats steps: not said)."""
        at = self.base + k
        if k == n:
            self.base += n
        if self.progress is not None and self.shown < at < self.total:
            self.shown = at
            self.progress(at, self.total)

    def grow(self, steps: int) -> None:
        self.total += steps
        self.shown = min(max(self.shown, self.base), self.total - 1)
        if self.progress is not None:
            self.progress(self.shown, self.total)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress(self.total, self.total)


def roughness(images: torch.Tensor) -> np.ndarray:
    """Mean absolute difference of neighbouring pixels (rows and columns) of each image (n, 1, h, w)."""
    x = images[:, 0].float()
    return ((x[:, 1:] - x[:, :-1]).abs().mean((1, 2)) + (x[:, :, 1:] - x[:, :, :-1]).abs().mean((1, 2))).numpy() / 2


def roughness_ratio(decoded: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, w: np.ndarray) -> np.ndarray:
    """Roughness of each decoded crop over the position-weighted roughness of its two acquired neighbours."""
    reference = (1 - w) * roughness(lo) + w * roughness(hi)
    return roughness(decoded) / np.maximum(reference, 1e-6)


def _schedule(model: DMCVRModel, strength: float) -> torch.Tensor:
    """alpha_bar of the first ``strength`` of the training timesteps: DDIM over them inverts to t < strength T."""
    if not 0 < strength <= 1:
        raise InputError(f"dmcvr strength: {strength}; expected a fraction in (0, 1] of the diffusion schedule")
    return model.alphas_cumprod[: max(1, int(round(strength * len(model.alphas_cumprod))))]


def _encode_flat(model: DMCVRModel, x: torch.Tensor, steps, strength, progress, cancel) -> torch.Tensor:
    x = model.check_images(x, "SAX crops")
    with torch.inference_mode():
        z, m = model.semantic(x), model.morph_net.encode(x)
        x_t = ddim_encode(model.eps_fn(z, m), to_diffusion_range(x), _schedule(model, strength),
                          steps, progress, cancel)  # fmt: skip
    return torch.cat([t.flatten(1) for t in (z, m, x_t)], 1).cpu()


def _decode(model: DMCVRModel, lat: Latents, steps, strength, progress, cancel) -> torch.Tensor:
    with torch.inference_mode():
        x0 = ddim_decode(model.eps_fn(lat.z_sem, lat.morph), lat.x_T, _schedule(model, strength),
                         steps, progress, cancel)  # fmt: skip
    return from_diffusion_range(x0).cpu()


def _unflatten(model: DMCVRModel, flat: torch.Tensor, hw) -> Latents:
    """Latents from rows of concatenated flattened (z_sem, morph, x_T) (one tensor so batching is simple)."""
    c = model.config
    z = c["z_dim"]
    mh, mw = hw[0] // 2 ** c["morph_level"], hw[1] // 2 ** c["morph_level"]
    mc = model.morph_net.code_channels
    n = flat.shape[0]
    flat = flat.to(model.device)
    return Latents(
        flat[:, :z], flat[:, z : z + mc * mh * mw].reshape(n, mc, mh, mw), flat[:, z + mc * mh * mw :].reshape(n, 1, *hw)
    )


def dmcvr(
    stack: SliceStack,
    targets: np.ndarray,
    steps: int | None = None,
    device: str = "auto",
    model: str | None = None,
    strength: float | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    shape_prior: float | None = None,
    guard: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels (m, rows, cols) at ``targets`` (mm along the normal) on the stack's own grid.

    The networks learnt slices described with the normal pointing base -> apex (ACDC as its files are
    read, the phantoms; ACDC's arrays are most likely the mirror of true anatomy so described, see the
    model card's Limits): a stack described the other way (rows and columns swapped, a valid DICOM
    description) shows them the mirror image. Such a stack is re-described (``SliceStack.transposed``, the
    same voxels in space) and the results transposed back; base and apex are told apart by the anatomy where the geometry is true,
    else by the given labels or the morphology net's labels of the acquired slices
    (geometry.stack.normal_points_to_apex)."""
    shape_prior = float(DEFAULT_SHAPE_PRIOR if shape_prior is None else shape_prior)
    if not 0 <= shape_prior < 1:
        raise InputError(f"dmcvr shape_prior: {shape_prior}; expected a weight in [0, 1) (0 = the network alone)")
    dev = resolve_device(device)
    if dev.type == "cpu":  # the DDIM loops allocate the same activations at every step: reuse them (UNet loop 1.14x)
        keep_freed_memory()
    net, size, spacing = load_dmcvr(model, str(dev))
    steps = DEFAULT_STEPS if steps is None else int(steps)
    strength = float(DEFAULT_STRENGTH if strength is None else strength)
    timesteps = len(_schedule(net, strength))
    if steps < 1 or steps > timesteps:
        raise InputError(f"dmcvr steps: {steps}; expected 1..{timesteps} at strength {strength}")
    if 1 < steps < min(MIN_STEPS * strength, timesteps):  # a partial inversion's steps are shorter: scaled
        warnings.warn(QualityWarning(steps_warning(steps)), stacklevel=2)
    batch_size = int(batch_size or DEFAULT_BATCH.get(dev.type, 32))
    view_mm = np.array(stack.shape2d) * np.array(stack.pixel_spacing)[::-1]
    if view_mm.min() < MIN_VIEW_MM:
        raise InputError(f"{stack.source}: dmcvr needs a field of view of at least {MIN_VIEW_MM:.0f} mm (the heart "
                         f"and its surroundings, as in training); this stack shows {view_mm[0]:.0f} x {view_mm[1]:.0f} mm "
                         "(check the pixel spacing, or use shape-based interpolation)")  # fmt: skip
    targets = np.asarray(targets, float)
    for message in input_warnings(stack):
        warnings.warn(QualityWarning(message), stacklevel=2)
    guard = float(ROUGHNESS_GUARD if guard is None else guard)
    if not guard > 0:  # NaN too
        raise InputError(f"dmcvr guard: {guard}; expected a roughness ratio > 0 (e.g. 1.2; inf = off)")
    options = dict(steps=steps, strength=strength, batch_size=batch_size, progress=progress, cancel=cancel,
                   shape_prior=shape_prior, guard=guard)  # fmt: skip
    by_anatomy = anatomy_says_normal_points_to_apex(stack)  # true geometry decides before any localisation
    view = None if by_anatomy is False else _View.of(net, stack, size, spacing, batch_size)
    if view is not None and (by_anatomy or view.points_to_apex()):
        _warn_if_doubtful(view)
        return _generate(net, view, targets, **options)
    flipped = _View.of(net, stack.transposed(), size, spacing, batch_size)  # the net sees a new image: look again
    _warn_if_doubtful(flipped)
    images, labels = _generate(net, flipped, -targets, **options)
    return np.transpose(images, (0, 2, 1)), np.transpose(labels, (0, 2, 1))


def steps_warning(steps: int) -> str:
    """The one-line QualityWarning of too few DDIM steps: the steps, what was measured, the suggested minimum."""
    return (f"dmcvr steps {steps}: fewer than {MIN_STEPS} DDIM steps lose quality (measured on ACDC 061-080, Dice "
            "LV/MYO/RV: 2 steps 0.49/0.35/0.13, 5 steps 0.84/0.73/0.64, 10 steps 0.88/0.80/0.78, 25 (default) "
            f"0.89/0.82/0.78, shape-based interpolation 0.88/0.81/0.74): use at least {MIN_STEPS} steps (default "
            f"{DEFAULT_STEPS})")


def _warn_if_doubtful(view: "_View") -> None:
    """QualityWarnings on the heart the networks are shown: a localisation without labels the net is unsure
    of; the net's labels of the acquired slices running against the stored geometry (given labels are
    checked once, in the stack's geometry report: geometry.stack.slice_order_warning)."""
    if view.labels is None:
        reversed_order = slice_order_warning(view.stack, labels=view.slice_labels()[0])
        if reversed_order:
            warnings.warn(QualityWarning(reversed_order), stacklevel=3)
    if view.confidence is not None and view.confidence < LOCALISATION_MIN_CONFIDENCE:
        r, c = view.center
        warnings.warn(QualityWarning(
            f"{view.stack.source}: dmcvr is unsure where the heart is without labels (net confidence "
            f"{view.confidence:.2f} < {LOCALISATION_MIN_CONFIDENCE}; crop centred at row {r:.0f}, column {c:.0f}): check "
            "that the labels lie on the heart, or give SAX labels; a wrong pixel spacing (a heart much larger or "
            "smaller than life-size) also causes this"
        ), stacklevel=3)  # fmt: skip


@dataclass
class _View:
    """A stack as the networks take it: intensities normalised, the heart's centre, and either the given
    labels or the morphology net's class probabilities of the unturned crops (``own``)."""

    stack: SliceStack
    pixels: np.ndarray
    labels: np.ndarray | None  # the given labels; None when the stack has none
    lo: float
    hi: float
    norm: np.ndarray
    center: tuple[float, float]
    size: int
    spacing: float
    blank: np.ndarray | None = None  # (n,) slices holding a single value (blank_slices)
    own: torch.Tensor | None = None  # without given labels: the net's probabilities of the crops at angle 0
    confidence: float | None = None  # without given labels: the localisation's (heart_center)

    @classmethod
    def of(cls, net: DMCVRModel, stack: SliceStack, size: int, spacing: float, batch_size: int) -> "_View":
        pixels, labels = aligned_arrays(stack)
        blank = blank_slices(stack.pixels)
        lo, hi = normalisation(pixels[~blank] if (~blank).any() else pixels)  # a blank slice does not set the scale
        norm = (np.minimum(pixels, hi) - lo) / (hi - lo)
        if labels is not None and labels.any():
            return cls(stack, pixels, labels, lo, hi, norm, label_center(labels), size, spacing, blank)
        center, confidence = heart_center(net, norm[~blank], stack.pixel_spacing, size, spacing)
        view = cls(stack, pixels, None, lo, hi, norm, center, size, spacing, blank, confidence=confidence)
        view.own = view.net_probs(net, view.crops(0.0)[1], batch_size)
        return view

    def net_probs(self, net: DMCVRModel, crops: torch.Tensor, batch_size: int, index=None) -> torch.Tensor:
        """The morphology net's class probabilities of the acquired slices' crops (those at ``index``, default
        all); background on blank slices (the net invents a heart on a blank image)."""
        index = np.arange(len(crops)) if index is None else np.asarray(index)
        probs = class_probs(net, crops[torch.as_tensor(index)], batch_size)
        blank = self.blank[index] if self.blank is not None else np.zeros(len(index), bool)
        if not blank.any():
            return probs
        background = torch.zeros_like(probs[:1])
        background[:, 0] = 1.0
        return torch.where(torch.from_numpy(blank)[:, None, None, None], background, probs)

    def filled_labels(self, net: DMCVRModel, frame: CropFrame, crops: torch.Tensor, batch_size: int) -> np.ndarray:
        """The given labels, slices left unlabelled between labelled ones (unlabelled_between) labelled by the
        net, restricted to the label values the given labels use."""
        labels = self.labels.copy()
        idx = np.nonzero(unlabelled_between(labels))[0]
        if len(idx) == 0:
            return labels
        probs = self.net_probs(net, crops, batch_size, idx).numpy()
        probs = probs * np.isin(np.arange(probs.shape[1]), [0, *np.unique(labels)])[None, :, None, None]
        for k, p in zip(idx, probs):
            labels[k] = _on_grid(frame, p, self.stack.shape2d).argmax(0)
        return labels

    def crops(self, angle: float) -> tuple[CropFrame, torch.Tensor]:
        frame = CropFrame(self.center, self.stack.pixel_spacing, self.size, self.spacing, angle=angle)
        return frame, torch.from_numpy(np.clip(frame.sample_stack(self.norm), 0, 1)[:, None].astype(np.float32))

    def slice_labels(self) -> tuple[np.ndarray, tuple[float, float]]:
        """Labels of the acquired slices and their pixel spacing: the given ones, else the net's (crop grid)."""
        if self.labels is not None:
            return self.labels, self.stack.pixel_spacing
        return self.own.argmax(1).numpy(), (self.spacing, self.spacing)

    def points_to_apex(self) -> bool:
        """Whether the stack's normal points base -> apex (geometry.stack.normal_points_to_apex: by the
        anatomy where the geometry is true, else by the heart's area along it in these labels)."""
        return normal_points_to_apex(self.stack, labels=self.slice_labels()[0])


def _generate(net: DMCVRModel, view: _View, targets, steps, strength, batch_size, progress, cancel, shape_prior, guard):  # fmt: skip
    """:func:`dmcvr` (arguments resolved there) on a stack whose normal points base -> apex."""
    stack, pixels, labels, lo, hi = view.stack, view.pixels, view.labels, view.lo, view.hi
    given = labels is not None
    # the RV where the training slices have it (in-plane turn; from the given labels, else the net's own)
    angle = crop_angle(*view.slice_labels())
    frame, crops = view.crops(angle)
    if given:
        labels = view.filled_labels(net, frame, crops, batch_size)
    out = _fill(net, crops, stack.positions, targets, steps, strength, batch_size, progress, cancel, guard)

    probs = class_probs(net, out, batch_size)
    acquired_probs = None  # without given labels: the net's, of the crops used (unturned: already at hand)
    if not given:
        acquired_probs = (view.own if angle == 0.0 else view.net_probs(net, crops, batch_size)).numpy()
    acquired_labels = labels if given else acquired_probs.argmax(1)
    # a structure absent from both acquired neighbours is not generated between them, and one present in only
    # one neighbour only up to half-way to the other (where shape-based interpolation tapers it to a point):
    # the morphology net otherwise labels stray RV/LV pixels near base and apex
    plo, phi, w = interpolation_plan(stack.positions, targets)
    present = np.stack([[(acquired_labels[k] == c).any() for c in range(probs.shape[1])] for k in range(stack.n)])
    present[:, 0] = True
    # exactly half-way both are kept: cutting there cost Dice LV -0.026, RV -0.066 on the ACDC gap protocol
    near_lo, near_hi = (w <= 0.5)[:, None], (w >= 0.5)[:, None]
    allowed = (present[plo] & near_lo) | (present[phi] & near_hi) | (present[plo] & present[phi])
    probs = probs * torch.from_numpy(allowed)[:, :, None, None]
    # back to the stack's grid; outside the crop: linear image, nearest labels (or background)
    base_images, base_labels = linear(stack, targets)
    images = base_images.astype(np.float32).copy()
    result = np.zeros(images.shape, np.uint8) if base_labels is None else base_labels.astype(np.uint8).copy()
    shape2d = stack.shape2d
    prior = None
    if shape_prior > 0:  # the given labels, else the net's labels of the acquired slices, shape-interpolated
        own = labels if given else np.stack([_on_grid(frame, p, shape2d).argmax(0) for p in acquired_probs])
        prior = shape_labels(own, stack.positions, targets, stack.pixel_spacing)
    for k in range(len(targets)):
        crop_image, inside = frame.back(out[k, 0].numpy(), shape2d)
        images[k][inside] = crop_image[inside] * (hi - lo) + lo
        class_maps = _on_grid(frame, probs[k].numpy(), shape2d)
        if prior is not None:
            class_maps = blend_with_prior(class_maps, prior[k], shape_prior)
        result[k][inside] = class_maps.argmax(0)[inside]
    acquired = np.nonzero(plo == phi)[0]
    images[acquired] = pixels[plo[acquired]]
    if given:
        result[acquired] = labels[plo[acquired]]
    return images, result


def blend_with_prior(class_maps: np.ndarray, prior: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - w) p_net + w q`` (module docstring): ``class_maps`` (C, rows, cols) the net's probabilities of a
    generated slice, ``prior`` its shape-based labels (other rules: scripts/try_dmcvr_label_rules.py)."""
    q = [ndimage.gaussian_filter((prior == c).astype(np.float32), SHAPE_PRIOR_SIGMA_PX) for c in range(len(class_maps))]
    return (1 - weight) * class_maps + weight * np.stack(q)


def _on_grid(frame: CropFrame, class_probs: np.ndarray, shape2d) -> np.ndarray:
    """Class probability maps (C, size, size) of a crop on the stack's grid (zero outside the crop)."""
    maps = [frame.back(p, shape2d) for p in class_probs]
    return np.stack([values * inside for values, inside in maps])


register_method("dmcvr", dmcvr)
