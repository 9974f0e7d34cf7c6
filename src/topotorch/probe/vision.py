"""Vision probes for any image model: TDANN's orientation maps and pinwheels from sine gratings, category
selectivity maps and patches from a labelled image set, and response correlation vs distance.

Images are ``(N, C, H, W)`` float tensors in ``[0, 1]`` before ``transform`` (the model's own normalisation,
e.g. ``lambda x: (x - mean) / std``). Offline image sets: ``lfw`` (scikit-image's LFW faces vs non-faces, a
face localizer), ``digits`` (scikit-learn's 8×8 digits), ``mnist`` (IDX files in a folder), a folder with one
sub-folder of images per category (e.g. an fLoc download), and ``natural`` (crops of scikit-image's bundled
photographs).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..hooks import responses
from .maps import map_tests
from .sheets import Sheet
from .stats import (binned_curve, coords_of, dprime, fdr, pair_distance, pair_sample, patches, smooth_maps,
                    welch_t)

__all__ = ["Gratings", "gratings", "orientation_tuning", "orientation_map", "count_pinwheels", "column_spacing",
           "pinwheel_density", "preference_smoothness", "category_images", "natural_images", "category_selectivity",
           "correlation_vs_distance", "sheet_responses"]


# ---- stimuli ----------------------------------------------------------------------------------------

@dataclass
class Gratings:
    """Full-field sine gratings ``images (K, C, H, W)`` in [0, 1] and, per image, ``orientation`` (degrees,
    0 = bars vertical, luminance varying along x), ``frequency`` (cycles per image) and ``phase`` (radians)."""
    images: torch.Tensor
    orientation: np.ndarray
    frequency: np.ndarray
    phase: np.ndarray


def gratings(size: int | tuple[int, int], channels: int = 3, orientations: int = 8, frequencies=None,
             phases: int = 5, contrast: float = 1.0) -> Gratings:
    """TDANN's grating set: ``orientations`` evenly over 180°, × ``frequencies`` (cycles per image; default
    8 log-spaced from 1 cycle to 4 pixels per cycle of the smaller side; 4 on inputs under 16 pixels),
    × ``phases`` evenly over 2π; grey (all channels equal), mean 0.5, Michelson ``contrast``."""
    H, W = (size, size) if isinstance(size, int) else size
    if min(H, W) < 4 or channels < 1 or orientations < 2 or phases < 1 or not 0 < contrast <= 1:
        raise ValueError(f"gratings need images ≥ 4×4, ≥ 1 channel, ≥ 2 orientations, ≥ 1 phase and 0 < contrast ≤ 1; "
                         f"got {H}×{W}, {channels}, {orientations}, {phases}, {contrast}")
    if frequencies is None:
        top = max(2.0, min(H, W) / 4)  # at least 4 pixels per cycle
        frequencies = np.geomspace(1.0, top, 8 if top >= 4 else 4)
    f = np.asarray(frequencies, dtype=np.float64)
    ori = np.arange(orientations) * 180.0 / orientations
    ph = np.arange(phases) * 2 * np.pi / phases
    O, Fq, P = np.meshgrid(ori, f, ph, indexing="ij")
    O, Fq, P = O.ravel(), Fq.ravel(), P.ravel()
    y, x = np.meshgrid((np.arange(H) + 0.5) / max(H, W), (np.arange(W) + 0.5) / max(H, W), indexing="ij")
    th = np.deg2rad(O)[:, None, None]
    arg = 2 * np.pi * Fq[:, None, None] * (x * np.cos(th) + y * np.sin(th)) + P[:, None, None]
    img = 0.5 + 0.5 * contrast * np.sin(arg)
    t = torch.tensor(img, dtype=torch.float32)[:, None].expand(-1, channels, -1, -1).contiguous()
    return Gratings(t, O, Fq, P)


def _resize(x: torch.Tensor, size: tuple[int, int], channels: int) -> torch.Tensor:
    x = x.float()
    if x.dim() == 3:
        x = x[:, None]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1).contiguous()
    if channels == 1:
        return x.mean(1, keepdim=True)
    raise ValueError(f"cannot turn {x.shape[1]}-channel images into {channels} channels")


def category_images(source, size: int | tuple[int, int], channels: int = 3, per_category: int | None = None,
                    seed: int = 0) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """``(images (N, C, H, W) in [0, 1], labels (N,), category names)`` of a labelled image set: ``"lfw"``,
    ``"offline"`` (:func:`offline_categories`), ``"digits"``, ``"mnist:DIR"`` (or a folder of MNIST IDX files), a
    folder with one sub-folder of images per
    category, or a tuple ``(images, labels[, names])``. ``per_category`` keeps a seeded subset of each."""
    H, W = (size, size) if isinstance(size, int) else size
    if isinstance(source, tuple):
        x, raw = torch.as_tensor(source[0]), np.asarray(source[1])
        if len(source) > 2:  # labels index the given names
            names = list(source[2])
            if raw.dtype.kind not in "iu" or raw.min() < 0 or raw.max() >= len(names):
                raise ValueError(f"labels must be indices into the {len(names)} category names {names}")
            y = raw
        else:  # any labels: their sorted distinct values are the categories
            classes, y = np.unique(raw, return_inverse=True)
            names = [str(c) for c in classes]
    elif source == "offline":
        x, y, names = offline_categories((H, W), per_category or 100, seed)
        per_category = None
    elif source == "lfw":
        from skimage.data import lfw_subset
        x = torch.tensor(lfw_subset(), dtype=torch.float32)  # 100 faces, then 100 non-faces, 25×25 in [0, 1]
        y, names = np.repeat([0, 1], 100), ["face", "non-face"]
    elif source == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        x, y, names = torch.tensor(d.images / 16.0, dtype=torch.float32), d.target, [str(i) for i in range(10)]
    elif str(source).startswith("mnist") or (Path(str(source)).is_dir() and any(Path(str(source)).glob("*idx3-ubyte*"))):
        from ..data import mnist
        folder = str(source).split(":", 1)[1] if str(source).startswith("mnist:") else (
            "data/mnist" if source == "mnist" else str(source))
        s = mnist(folder, download=False)
        x = torch.cat([torch.as_tensor(s.x_train), torch.as_tensor(s.x_test)])
        y = np.concatenate([np.asarray(s.y_train), np.asarray(s.y_test)])
        names = [str(i) for i in range(10)]
    else:
        x, y, names = _folder_images(Path(str(source)), (H, W))
    if len(names) < 2 or len(np.unique(y)) < 2:
        raise ValueError(f"{source}: category selectivity needs at least two categories, found {names}")
    if per_category is not None:
        rs = np.random.RandomState(seed)
        keep = np.concatenate([rs.permutation(np.nonzero(y == c)[0])[:per_category] for c in np.unique(y)])
        x, y = x[torch.as_tensor(np.sort(keep))], y[np.sort(keep)]
    return _resize(torch.as_tensor(x), (H, W), channels), np.asarray(y), names


def _folder_images(root: Path, size) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    from PIL import Image
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such image folder (give lfw, digits, mnist:DIR or a folder with one "
                                "sub-folder per category)")
    cats = sorted(d for d in root.iterdir() if d.is_dir())
    ext = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
    imgs, labels, names = [], [], []
    for d in cats:
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in ext)
        if not files:
            continue
        names.append(d.name)
        for f in files:
            with Image.open(f) as im:
                a = np.asarray(im.convert("RGB").resize(size[::-1], Image.BILINEAR), dtype=np.float32) / 255.0
            imgs.append(torch.tensor(a).permute(2, 0, 1))
            labels.append(len(names) - 1)
    if len(names) < 2:
        raise ValueError(f"{root}: category selectivity needs at least two sub-folders of images, found "
                         f"{[d.name for d in cats]}")
    return torch.stack(imgs), np.asarray(labels), names


NATURAL = ("astronaut", "coffee", "chelsea", "cat", "rocket", "camera", "coins", "moon", "grass", "gravel", "brick",
           "hubble_deep_field", "immunohistochemistry", "retina")


def offline_categories(size: int | tuple[int, int], per_category: int = 100, seed: int = 0
                       ) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Four categories of real images that need no download, ``per_category`` each (faces at most 100), grey,
    ``(images (4·k, 1, H, W) in [0, 1], labels, names)``: ``face`` and ``non-face`` (scikit-image's LFW subset:
    faces and the non-face crops of its detector benchmark), ``character`` (scikit-learn's handwritten digits)
    and ``scene`` (random crops of scikit-image's photographs, :func:`natural_images`). The closest offline
    stand-in for TDANN's face/body/character/place localiser; the sources differ in more than category (digits
    are 8×8 upsampled), so read a selectivity map as "this source", not only "this category"."""
    from skimage.data import lfw_subset
    from sklearn.datasets import load_digits
    H, W = (size, size) if isinstance(size, int) else size
    if not 2 <= per_category <= 100:
        raise ValueError(f"per_category must be in [2, 100] (the LFW subset has 100 faces), got {per_category}")
    rs = np.random.RandomState(seed)
    lfw = torch.tensor(lfw_subset(), dtype=torch.float32)[:, None]
    faces, nonfaces = lfw[rs.permutation(100)[:per_category]], lfw[100 + rs.permutation(100)[:per_category]]
    d = load_digits()
    digits = torch.tensor(d.images[rs.permutation(len(d.images))[:per_category]] / 16.0, dtype=torch.float32)[:, None]
    scenes = natural_images((H, W), 1, per_category, seed)
    x = torch.cat([_resize(t, (H, W), 1) for t in (faces, nonfaces, digits)] + [scenes])
    return x.clamp(0, 1), np.repeat(np.arange(4), per_category), ["face", "non-face", "character", "scene"]


def natural_images(size: int | tuple[int, int], channels: int = 3, n: int = 256, seed: int = 0) -> torch.Tensor:
    """``n`` random square crops (a quarter to all of the shorter side) of scikit-image's bundled photographs
    (:data:`NATURAL`, no download), resized to ``size``, in [0, 1]; grey photographs are repeated over channels,
    colour ones averaged for a one-channel model."""
    H, W = (size, size) if isinstance(size, int) else size
    photos = _photos(channels != 3)
    rs = np.random.RandomState(seed)
    out = []
    for _ in range(n):
        p = photos[rs.randint(len(photos))]
        side = rs.randint(min(p.shape[1:]) // 4, min(p.shape[1:]) + 1)
        y0, x0 = rs.randint(p.shape[1] - side + 1), rs.randint(p.shape[2] - side + 1)
        out.append(_resize(p[None, :, y0:y0 + side, x0:x0 + side], (H, W), channels))
    return torch.cat(out)


@functools.lru_cache(maxsize=2)
def _photos(grey: bool) -> tuple[torch.Tensor, ...]:
    """:data:`NATURAL` as ``(C, H, W)`` tensors in [0, 1], read once per process (every probed arm crops the same
    photographs); ``grey`` (a model that does not read 3 channels): colour photographs averaged over their
    channels, per pixel, so a crop of the average is the average of the crop."""
    from skimage import data as skd
    photos = []
    for nm in NATURAL:
        try:
            a = np.asarray(getattr(skd, nm)(), dtype=np.float32)
        except Exception:  # an image this scikit-image version does not ship
            continue
        a = a / (255.0 if a.max() > 1.5 else 1.0)
        p = torch.tensor(a if a.ndim == 3 else a[..., None])[..., :3].permute(2, 0, 1)
        photos.append(p.mean(0, keepdim=True) if grey and len(p) != 1 else p)
    if not photos:
        raise RuntimeError("scikit-image ships none of its natural photographs on this install")
    return tuple(photos)


def sheet_responses(model, sheets: list[Sheet], images: torch.Tensor, batch: int = 64, transform=None,
                    rectify: bool = True) -> dict[str, torch.Tensor]:
    """``{sheet: (images, units)}``: each sheet's (ReLU-rectified, as a firing rate) response to each image,
    run in batches on the model's device in eval mode (restored after)."""
    def batches():
        for k in range(0, len(images), batch):
            x = images[k:k + batch]
            yield transform(x) if transform is not None else x
    try:
        got = responses(model, {s.name: s.module for s in sheets}, batches(), units={s.name: s.units for s in sheets})
    except RuntimeError as e:  # shape or channel mismatch inside the model's forward
        raise ValueError(f"the model does not take images of shape {tuple(images.shape[1:])} ({' '.join(str(e).split())}); "
                         "give its input shape (--input-shape C,H,W) or its transform") from None
    return {k: v.clamp_min(0) if rectify else v for k, v in got.items()}


# ---- orientation ------------------------------------------------------------------------------------

def orientation_tuning(resp, g: Gratings) -> dict:
    """Per unit, from responses ``(gratings, units)`` (non-negative): the tuning curve over orientations at the
    unit's preferred spatial frequency (mean over phases), the preferred orientation (degrees in [0, 180), from
    the vector sum Σ r(θ) e^{2iθ}), circular variance ``1 − |Σ r e^{2iθ}| / Σ r``, and OSI (r_pref − r_orth) /
    (r_pref + r_orth) with r_pref the largest response and r_orth the one 90° away. Units that never respond
    get NaN and ``responsive`` False."""
    r = np.asarray(resp, dtype=np.float64)
    if (r < 0).any():
        raise ValueError("orientation tuning needs non-negative responses (rectify them)")
    oris, freqs = np.unique(g.orientation), np.unique(g.frequency)
    O, S = len(oris), len(freqs)
    if O % 2:
        raise ValueError("OSI needs an even number of orientations (the orthogonal one must be shown)")
    cube = np.zeros((O, S, r.shape[1]))
    for a, th in enumerate(oris):
        for b, f in enumerate(freqs):
            sel = (g.orientation == th) & (g.frequency == f)
            cube[a, b] = r[sel].mean(0)
    best = cube.mean(0).argmax(0)                                     # preferred frequency per unit
    curves = np.take_along_axis(cube, best[None, None, :], 1)[:, 0].T  # (units, O)
    return tuning_from_curves(curves, oris) | {"preferred_frequency": freqs[best]}


def tuning_from_curves(curves, orientations) -> dict:
    """Preferred orientation, circular variance and OSI of tuning curves ``(units, O)`` over ``orientations``
    (degrees, evenly spaced over 180°)."""
    c = np.asarray(curves, dtype=np.float64)
    th = np.deg2rad(np.asarray(orientations, dtype=np.float64))
    total = c.sum(1)
    z = (c * np.exp(2j * th)).sum(1)
    ok = total > 0
    pref = np.where(ok, (np.rad2deg(np.angle(z)) / 2) % 180.0, np.nan)
    cv = np.where(ok, 1 - np.abs(z) / np.where(ok, total, 1), np.nan)
    O = c.shape[1]
    k = c.argmax(1)
    rp, ro = c[np.arange(len(c)), k], c[np.arange(len(c)), (k + O // 2) % O]
    osi = np.where(rp + ro > 0, (rp - ro) / np.where(rp + ro > 0, rp + ro, 1), np.nan)
    return {"curves": c, "preferred": pref, "circular_variance": cv, "osi": osi, "responsive": ok}


def orientation_map(preferred, weight, layout, cell: float | None = None) -> tuple[np.ndarray, float]:
    """The orientation map as a complex image ``z = mean of weight · e^{2iθ}`` over the units in each square
    bin of ``cell`` (default: one grid cell on a grid; else ≈ 4 units per bin), NaN where a bin has no
    responsive unit. Returns ``(z (rows, cols), cell)``."""
    c = coords_of(layout)[:, :2]
    pref = np.asarray(preferred, dtype=np.float64)
    w = np.nan_to_num(np.asarray(weight, dtype=np.float64))
    ok = np.isfinite(pref)
    lo, span = c.min(0), np.ptp(c, 0)
    if cell is None:
        from .stats import is_grid
        cell = 1.0 if is_grid(c) else 2.0 * math.sqrt(max(span[0], 1e-9) * max(span[1], 1e-9) / len(c))
    idx = np.floor((c - lo) / cell + (0.5 if cell == 1.0 else 0.0)).astype(int)
    shape = idx.max(0)[::-1] + 1
    zs, cnt = np.zeros(shape, complex), np.zeros(shape)
    np.add.at(zs, (idx[ok, 1], idx[ok, 0]), w[ok] * np.exp(2j * np.deg2rad(pref[ok])))
    np.add.at(cnt, (idx[ok, 1], idx[ok, 0]), 1.0)
    z = np.where(cnt > 0, zs / np.maximum(cnt, 1), np.nan + 0j)
    return z, float(cell)


def count_pinwheels(z) -> list[tuple[float, float, int]]:
    """Pinwheels of an orientation map given as a complex image ``z (rows, cols)`` whose angle is twice the
    orientation: every 2×2 plaquette of finite pixels around which arg z winds by ±2π (an orientation
    half-turn). Returns ``[(row, col, charge ±1), …]`` at plaquette centres."""
    z = np.asarray(z, dtype=complex)
    a = np.angle(z)
    bad = ~np.isfinite(z)

    def wrap(d):
        return (d + np.pi) % (2 * np.pi) - np.pi

    # the loop (r,c) → (r,c+1) → (r+1,c+1) → (r+1,c) → (r,c)
    p00, p01, p11, p10 = a[:-1, :-1], a[:-1, 1:], a[1:, 1:], a[1:, :-1]
    wind = wrap(p01 - p00) + wrap(p11 - p01) + wrap(p10 - p11) + wrap(p00 - p10)
    valid = ~(bad[:-1, :-1] | bad[:-1, 1:] | bad[1:, 1:] | bad[1:, :-1])
    charge = np.where(valid, np.rint(wind / (2 * np.pi)), 0).astype(int)
    rr, cc = np.nonzero(charge)
    return [(r + 0.5, c + 0.5, int(np.sign(charge[r, c]))) for r, c in zip(rr, cc)]


def column_spacing(z) -> float:
    """The map's column spacing Λ in pixels: 1 / the power-weighted mean spatial frequency of ``z`` (mean
    removed, NaN as 0) — the wavelength of the dominant orientation columns (Kaschube et al. 2010)."""
    z = np.nan_to_num(np.asarray(z, dtype=complex))
    z = z - z[z != 0].mean() if (z != 0).any() else z
    P = np.abs(np.fft.fft2(z)) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(z.shape[0]), np.fft.fftfreq(z.shape[1]), indexing="ij")
    k = np.hypot(fy, fx)
    P[0, 0] = 0.0
    if P.sum() == 0:
        return float("nan")
    return float(1.0 / ((P * k).sum() / P.sum()))


def pinwheel_density(z, spacing: float | None = None) -> dict:
    """Pinwheels per column-spacing² (Λ²; π in cat and macaque V1): ``count / (valid area / Λ²)`` with the
    area counted in plaquettes of finite pixels. ``spacing`` Λ in pixels (default :func:`column_spacing`)."""
    z = np.asarray(z, dtype=complex)
    pw = count_pinwheels(z)
    fin = np.isfinite(z)
    area = float((fin[:-1, :-1] & fin[:-1, 1:] & fin[1:, 1:] & fin[1:, :-1]).sum())
    lam = column_spacing(z) if spacing is None else float(spacing)
    dens = len(pw) * lam ** 2 / area if area > 0 and np.isfinite(lam) else float("nan")
    return {"pinwheels": len(pw), "column_spacing": lam, "area": area, "density": float(dens),
            "positions": [(r, c, q) for r, c, q in pw]}


def preference_smoothness(values, layout, period: float | None = None, bins: int = 10, max_pairs: int = 2_000_000,
                          seed: int = 0, radius: float = 1.0) -> dict:
    """How smooth a preference map is (circular differences with ``period``, e.g. 180 for orientation).

    ``smoothness``: TDANN's index — with c_b the mean ``|Δ preference|`` of unit pairs in distance bin b, S =
    (max_b c_b − c_0) / max_b c_b (depends on the bin width: ``bins`` equal bins up to the largest distance);
    ``local``: 1 − (mean ``|Δ|`` between neighbours within ``radius`` cells) / (mean ``|Δ|`` between random units) — 0 for
    a map without order, 1 when neighbours agree exactly, independent of binning; and the curve. NaN
    preferences are left out; more than ``max_pairs`` pairs are sampled (seeded)."""
    from .stats import neighbours
    v = np.asarray(values, dtype=np.float64)
    c = coords_of(layout)
    ok = np.isfinite(v)
    v, c = v[ok], c[ok]
    if len(v) < 3:
        return {"smoothness": float("nan"), "local": float("nan"), "curve": {"distance": [], "value": [], "count": []}}

    def diff(a, b):
        d = np.abs(a - b)
        return np.minimum(d % period, period - d % period) if period else d
    i, j = pair_sample(len(v), max_pairs, seed)
    d = pair_distance(c, i, c, j)
    dv = diff(v[i], v[j])
    curve = binned_curve(d, dv, bins)
    cb = np.asarray(curve["value"])
    top = cb.max()
    ni, nj = neighbours(c, radius).nonzero()
    local = 1 - diff(v[ni], v[nj]).mean() / dv.mean() if len(ni) and dv.mean() > 0 else float("nan")
    return {"smoothness": float((top - cb[0]) / top) if top > 0 else 0.0, "local": float(local), "curve": curve}


# ---- categories and correlations --------------------------------------------------------------------

def category_selectivity(resp, labels, names, layout, fwhm: float | None = 2.0, permutations: int = 999,
                         seed: int = 0, patch_fwhm: float | None = None, patch_threshold: float = 2.0,
                         min_units: int = 10) -> dict:
    """Per category, each unit's selectivity vs all other images — Welch t (with BH-FDR) and d′ — and the
    t-map's Moran's I (unsmoothed and smoothed) with shuffled-position nulls and permutation p; and its
    patches (TDANN): the t-map smoothed by ``patch_fwhm`` cells (default 4 % of the sheet's extent, at least 2),
    connected groups of ≥ ``min_units`` units with smoothed t > ``patch_threshold``."""
    r = np.asarray(resp, dtype=np.float64)
    y = np.asarray(labels)
    c = coords_of(layout)
    pf = patch_fwhm or max(2.0, 0.04 * float(np.ptp(c, 0).max()))
    rest, maps = {}, []
    for k, name in enumerate(names):
        a, b = r[y == k], r[y != k]
        if len(a) < 2 or len(b) < 2:
            raise ValueError(f"category {name!r} has {len(a)} images: each category needs at least two")
        t, p = welch_t(a, b)
        _, sig = fdr(p)
        maps.append(t)
        rest[name] = {"significant_units": int(sig.sum()), "dprime_mean": float(dprime(a, b).mean()), "t_map": t.tolist()}
    smoothed = smooth_maps(np.stack(maps, 1), c, pf)  # one kernel for every category's map (wide on a large sheet)
    for k, name in enumerate(names):
        pt = patches(smoothed[:, k], c, patch_threshold, min_units)
        rest[name].update(patches=pt["count"], patch_sizes=pt["sizes"], patch_fwhm=pf, patch_labels=pt["labels"])
    # every category's map against the same shuffles, drawn once
    return {name: {**test, **rest[name]} for name, test in zip(names, map_tests(maps, c, fwhm, permutations, seed))}


def correlation_vs_distance(resp, layout, bins: int = 12, max_units: int = 3000, seed: int = 0) -> dict:
    """TDANN's curve: mean pairwise response correlation (over images) in distance bins, on at most
    ``max_units`` units (a seeded sample); units that never vary are left out."""
    r = torch.as_tensor(np.asarray(resp), dtype=torch.float64)
    c = coords_of(layout)
    keep = np.nonzero((r.std(0) > 0).numpy())[0]
    if len(keep) > max_units:
        keep = np.sort(np.random.RandomState(seed).choice(keep, max_units, replace=False))
    if len(keep) < 3:
        return {"distance": [], "value": [], "count": []}
    x = r[:, keep]
    x = (x - x.mean(0)) / x.std(0)
    R = (x.T @ x / (len(x) - 1)).numpy()
    i, j = np.triu_indices(len(keep), 1)
    cc = c[keep]
    return binned_curve(pair_distance(cc, i, cc, j), R[i, j], bins)
