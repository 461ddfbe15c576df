"""Dead-leaves scenes: unlimited synthetic training images with natural-image statistics.

The dead-leaves model (Matheron 1968; Lee, Mumford & Huang, "Occlusion models for natural images: a
statistical study of a scale-invariant dead leaves model", IJCV 2001) stacks random opaque shapes
("leaves") front to back. With radii drawn from a power law ``p(r) ~ r^-3`` between ``rmin`` and
``rmax`` the image is scale invariant: its radially averaged power spectrum falls as ``1/f^2``, as
natural photographs' do. Achddou, Gousseau & Ladjal ("Synthetic images as a regularity prior for
image restoration neural networks", SSVM 2021) show that restoration networks trained on such
images come close to ones trained on photographs; as they do, the leaves here are discs, rotated
rectangles and ellipses, carry a texture (a sinusoidal grating or band-limited noise) and a random
subset of depth layers is blurred as if out of focus.

Colours come from a parametric model in CIELab (lightness ``100 * Beta(2, 2.5)``, chroma
``Gamma(1.5, 12)``, uniform hue), not from any photograph, so no scene content of the held-out
photographs (:func:`isplab.data.sources.skimage_photo`) leaks into training; the scenes' mean
lightness and median chroma fall within the range of those photographs' (tested). Pass ``palette``
to draw colours from a set of your own instead.

Rendering is vectorised: every leaf's pixels are listed at once (leaves grouped by size so each
group shares one bounding-box stencil) and a scatter-min over leaf indices keeps the front-most
leaf of each pixel. ``benchmarks/isp.py`` prints the time of one 512 x 512 scene.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from isplab.errors import IsplabError

SHAPES = ("disc", "rectangle", "ellipse")
#: CIELab colour model: lightness ``100 * Beta(a, b)``, chroma ``Gamma(shape, scale)``, uniform hue
LAB_LIGHTNESS_BETA = (2.0, 2.5)
LAB_CHROMA_GAMMA = (1.5, 12.0)
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])
_XYZ_TO_LINEAR_SRGB = np.linalg.inv(
    np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
)


def leaf_radii(count: int, rng: np.random.Generator, rmin: float, rmax: float, alpha: float = 3.0) -> np.ndarray:
    """``count`` radii with density ``p(r) ~ r^-alpha`` on ``[rmin, rmax]`` (inverse-CDF sampling), float64."""
    if not 0 < rmin < rmax:
        raise IsplabError(f"leaf radii need 0 < rmin < rmax, got rmin={rmin}, rmax={rmax}")
    u = rng.random(count)
    if abs(alpha - 1.0) < 1e-9:
        return rmin * (rmax / rmin) ** u
    e = 1.0 - alpha
    return (rmin**e + u * (rmax**e - rmin**e)) ** (1.0 / e)


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """CIELab (D65) ``(..., 3)`` -> sRGB in [0, 1] (out-of-gamut colours clipped), float64."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    delta = 6.0 / 29.0
    xyz = np.where(f > delta, f**3, 3 * delta**2 * (f - 4.0 / 29.0)) * _D65_WHITE
    linear = np.clip(xyz @ _XYZ_TO_LINEAR_SRGB.T, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


def natural_colours(count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` sRGB colours ``(count, 3)`` from the CIELab model of the module docstring."""
    lightness = 100.0 * rng.beta(*LAB_LIGHTNESS_BETA, size=count)
    chroma = rng.gamma(LAB_CHROMA_GAMMA[0], LAB_CHROMA_GAMMA[1], size=count)
    hue = rng.uniform(0.0, 2 * np.pi, size=count)
    lab = np.stack([lightness, chroma * np.cos(hue), chroma * np.sin(hue)], axis=-1)
    return lab_to_srgb(lab)


def dead_leaves(
    size: int | tuple[int, int],
    rng: np.random.Generator,
    *,
    rmin: float = 2.0,
    rmax: float | None = None,
    alpha: float = 3.0,
    coverage: float = 4.0,
    shapes: tuple[str, ...] = SHAPES,
    texture_probability: float = 0.5,
    blur_probability: float = 0.3,
    depth_layers: int = 3,
    max_blur_sigma: float = 3.0,
    palette: np.ndarray | None = None,
) -> np.ndarray:
    """A dead-leaves scene, ``(height, width, 3)`` float32 sRGB in [0, 1].

    Args:
        size: ``(width, height)`` as :mod:`isplab.data.sources` takes it, or one int for a square.
        rng: every random choice comes from it (the same state gives the same image).
        rmin, rmax: leaf radius range in pixels (``rmax`` default: the larger side / 2).
        alpha: radius density exponent, ``p(r) ~ r^-alpha`` (3 gives scale invariance).
        coverage: leaves drawn = ``coverage`` x image area / mean leaf area; pixels no leaf covers
            (a fraction of about ``exp(-coverage)``) show the background leaf.
        shapes: which leaf shapes to draw, from :data:`SHAPES`.
        texture_probability: chance that a leaf carries a texture (grating or noise).
        blur_probability: chance that each of the ``depth_layers`` (front to back slices of the
            leaf stack) is blurred, with a Gaussian of sigma up to ``max_blur_sigma`` pixels.
        palette: ``(N, 3)`` sRGB colours to draw leaf colours from; default: :func:`natural_colours`.

    Raises:
        IsplabError: a bad size, radius range, shape name or palette.
    """
    w, h = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if w < 1 or h < 1:
        raise IsplabError(f"dead-leaves size must be positive, got {w}x{h}")
    rmax = float(max(w, h)) / 2 if rmax is None else float(rmax)
    bad = [s for s in shapes if s not in SHAPES]
    if bad or not shapes:
        raise IsplabError(f"unknown leaf shape(s) {bad}: expected some of {', '.join(SHAPES)}")
    if palette is not None:
        palette = np.asarray(palette, dtype=np.float64)
        if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) == 0:
            raise IsplabError(f"palette must be an (N, 3) array of sRGB colours, got shape {palette.shape}")

    # Mean leaf area under p(r) ~ r^-alpha, estimated from a fixed quantile grid (no random draws).
    grid = leaf_radii(1, np.random.default_rng(0), rmin, rmax, alpha)  # validates the range
    u = (np.arange(4096) + 0.5) / 4096
    e = 1.0 - alpha
    grid = rmin * (rmax / rmin) ** u if abs(e) < 1e-9 else (rmin**e + u * (rmax**e - rmin**e)) ** (1.0 / e)
    mean_area = float(np.pi * np.mean(grid**2))
    count = max(1, math.ceil(coverage * w * h / mean_area))

    # Leaf parameters, index 0 = front-most.
    radii = leaf_radii(count, rng, rmin, rmax, alpha)
    cx = rng.uniform(-0.5, w - 0.5, count)
    cy = rng.uniform(-0.5, h - 0.5, count)
    kind = rng.integers(0, len(shapes), count)
    kind = np.array([SHAPES.index(s) for s in shapes])[kind]
    theta = rng.uniform(0, np.pi, count)
    aspect = rng.uniform(0.3, 1.0, count)  # minor / major axis of ellipses and rectangles
    colours = palette[rng.integers(0, len(palette), count + 1)] if palette is not None else natural_colours(count + 1, rng)
    textured = rng.random(count + 1) < texture_probability
    texture_kind = rng.integers(0, 2, count + 1)  # 0 grating, 1 noise
    amplitude = np.where(textured, rng.uniform(0.05, 0.35, count + 1), 0.0)
    frequency = np.exp(rng.uniform(np.log(1 / 48), np.log(1 / 4), count + 1))  # cycles per pixel
    orientation = rng.uniform(0, np.pi, count + 1)
    phase = rng.uniform(0, 2 * np.pi, count + 1)
    layer_blur = np.where(rng.random(depth_layers) < blur_probability,
                          rng.uniform(0.7, max_blur_sigma, depth_layers), 0.0)
    noise_field = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 1.5)
    noise_field /= max(float(noise_field.std()), 1e-6)
    background = count  # the background leaf's index (behind every other one)

    pixels, owners = _leaf_pixels(w, h, radii, cx, cy, kind, theta, aspect)
    layer_of = np.minimum((np.arange(count) * depth_layers) // count, depth_layers - 1)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    canvas = np.broadcast_to(colours[background].astype(np.float32), (h, w, 3))  # the background leaf, flat
    for layer in range(depth_layers - 1, -1, -1):  # back to front
        keep = layer_of[owners] == layer
        front = _front_most(pixels[keep], owners[keep], h * w, background)
        mask = (front != background).reshape(h, w).astype(np.float32)
        if not mask.any():
            continue
        colour = _shade(front, colours, amplitude, texture_kind, frequency, orientation, phase, xs, ys, noise_field)
        colour = colour * mask[..., None]
        sigma = float(layer_blur[layer])
        if sigma > 0:  # out of focus: blur colour and coverage together (premultiplied alpha)
            colour = cv2.GaussianBlur(colour, (0, 0), sigma)
            mask = cv2.GaussianBlur(mask, (0, 0), sigma)
        canvas = canvas * (1.0 - mask[..., None]) + colour
    return np.clip(canvas, 0.0, 1.0).astype(np.float32)


def _leaf_pixels(w, h, radii, cx, cy, kind, theta, aspect) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat pixel indices covered by each leaf and the leaf's index, leaves grouped by size."""
    pixels, owners = [], []
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    # Half axes: a disc has (r, r); an ellipse (r, aspect r); a rectangle's half diagonal is r.
    major = np.where(kind == 1, radii / np.sqrt(1 + aspect**2), radii)
    minor = np.where(kind == 0, radii, major * aspect)
    edges = np.minimum(np.ceil(radii), max(w, h))
    bound = 1
    remaining = np.ones(len(radii), bool)
    while remaining.any():
        group = np.nonzero(remaining & (edges <= bound))[0]
        remaining[group] = False
        if len(group):
            offsets = np.arange(-bound, bound + 1, dtype=np.float32)
            dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
            dy, dx = dy.ravel(), dx.ravel()
            px = np.round(cx[group]).astype(np.int64)[:, None] + dx.astype(np.int64)[None]
            py = np.round(cy[group]).astype(np.int64)[:, None] + dy.astype(np.int64)[None]
            rx = (px - cx[group, None]).astype(np.float32)
            ry = (py - cy[group, None]).astype(np.float32)
            c, s = cos_t[group, None].astype(np.float32), sin_t[group, None].astype(np.float32)
            u = (c * rx + s * ry) / major[group, None].astype(np.float32)
            v = (-s * rx + c * ry) / minor[group, None].astype(np.float32)
            rect = (kind[group] == 1)[:, None]
            inside = np.where(rect, np.maximum(np.abs(u), np.abs(v)) <= 1.0, u * u + v * v <= 1.0)
            inside &= (px >= 0) & (px < w) & (py >= 0) & (py < h)
            rows, cols = np.nonzero(inside)
            pixels.append(torch.from_numpy(py[rows, cols] * w + px[rows, cols]))
            owners.append(torch.from_numpy(group[rows]))
        bound *= 2
    return torch.cat(pixels), torch.cat(owners)


def _front_most(pixels: torch.Tensor, owners: torch.Tensor, n: int, background: int) -> np.ndarray:
    """Per pixel, the smallest (front-most) leaf index covering it, else ``background``."""
    front = torch.full((n,), background, dtype=torch.int64)
    if len(pixels):
        front.scatter_reduce_(0, pixels, owners, reduce="amin")
    return front.numpy()


def _shade(front, colours, amplitude, texture_kind, frequency, orientation, phase, xs, ys, noise_field) -> np.ndarray:
    """The colour of each pixel's leaf, modulated by that leaf's texture: ``(h, w, 3)`` float32."""
    h, w = xs.shape
    leaf = front.reshape(h, w)
    gain = np.ones((h, w), np.float32)
    noisy = (texture_kind[leaf] == 1) & (amplitude[leaf] > 0)
    gain[noisy] += (amplitude[leaf[noisy]] * noise_field[noisy]).astype(np.float32)
    striped = (texture_kind[leaf] == 0) & (amplitude[leaf] > 0)
    ids = leaf[striped]
    along = np.cos(orientation[ids]) * xs[striped] + np.sin(orientation[ids]) * ys[striped]
    gain[striped] += (amplitude[ids] * np.sin(2 * np.pi * frequency[ids] * along + phase[ids])).astype(np.float32)
    return colours[leaf].astype(np.float32) * gain[..., None]
