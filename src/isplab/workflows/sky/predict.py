"""Sky prediction at any size: overlapping tiles blended with a smooth window, bounded memory.

:func:`predict_alpha` is the one inference function (training validation, the CLI and tests use
it). The image is reflect-padded to a multiple of the network's ``size_multiple``; tiles of side
``tile`` start every ``tile - overlap`` pixels (multiples of ``size_multiple``, so every tile sees
the same pixel grid as the whole image would) and the last one is flush with the far edge. Each
tile's sigmoid output is weighted by a window that is 0 for ``margin`` pixels at the tile's inner
edges (where the tile's own zero padding changes the output), rises as a raised cosine over the rest
of the overlap and is 1 in the middle; edges on the image border keep weight 1. The result is the
weighted mean. Memory: the image, two ``H x W`` float32 accumulators and one batch of tiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from isplab.errors import IsplabError
from isplab.workflows.sky.hdr import LogEncoding, network_input


@dataclass(frozen=True)
class TileOptions:
    """``tile``: tile side (a multiple of the model's ``size_multiple``); ``overlap``: pixels shared by
    neighbouring tiles; ``margin``: pixels of each inner tile edge given weight 0 (< overlap / 2);
    ``batch``: tiles per forward pass. ``tile=0`` runs the whole image at once."""

    tile: int = 1024
    overlap: int = 512
    margin: int = 192
    batch: int = 4


def _ramp(length: int, overlap: int, margin: int, start_edge: bool, end_edge: bool) -> np.ndarray:
    w = np.ones(length, np.float64)
    rise = max(1, overlap - 2 * margin)
    t = (np.arange(overlap) - margin + 0.5) / rise
    ramp = np.where(t <= 0, 0.0, np.where(t >= 1, 1.0, 0.5 - 0.5 * np.cos(np.pi * np.clip(t, 0, 1))))
    if not start_edge:
        w[:overlap] = np.minimum(w[:overlap], ramp)
    if not end_edge:
        w[length - overlap :] = np.minimum(w[length - overlap :], ramp[::-1])
    return w


def _starts(size: int, tile: int, step: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)
    return sorted(set(starts))


@torch.no_grad()
def predict_alpha(
    model: nn.Module,
    pixels: np.ndarray,
    hdr: bool,
    options: TileOptions = TileOptions(),
    *,
    encoding: LogEncoding | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Soft sky probability ``(H, W)`` float32 in [0, 1] for ``pixels`` ``(H, W, 3)``.

    Raises:
        IsplabError: a tile size that is not a multiple of the model's ``size_multiple``, or an
            overlap/margin that does not fit the tile.
    """
    from isplab.workflows.sky.model import model_encoding

    encoding = encoding or model_encoding(model)
    mult = int(getattr(model, "size_multiple", 32))
    h, w = pixels.shape[:2]
    ph, pw = -(-h // mult) * mult, -(-w // mult) * mult
    model = model.eval().to(device)
    tile, overlap, margin = options.tile, options.overlap, options.margin
    if tile <= 0 or (tile >= ph and tile >= pw):
        x = _encode(pixels, hdr, encoding, ph, pw)
        out = torch.sigmoid(model(torch.from_numpy(x).permute(2, 0, 1)[None].to(device)))[0, 0]
        return out[:h, :w].float().cpu().numpy()
    if tile % mult:
        raise IsplabError(f"tile {tile} must be a multiple of {mult} (the model's size multiple)")
    if not (0 <= 2 * margin < overlap < tile) or (tile - overlap) % mult:
        raise IsplabError(f"bad tiling: need 0 <= 2*margin < overlap < tile and tile - overlap a multiple of {mult}, got tile {tile}, overlap {overlap}, margin {margin}")
    padded = _encode(pixels, hdr, encoding, max(ph, tile), max(pw, tile), lazy=True)
    H, W = max(ph, tile), max(pw, tile)
    acc = np.zeros((H, W), np.float32)
    weight = np.zeros((H, W), np.float32)
    ys, xs = _starts(H, tile, tile - overlap), _starts(W, tile, tile - overlap)
    boxes = [(y, x) for y in ys for x in xs]
    for k in range(0, len(boxes), max(1, options.batch)):
        chunk = boxes[k : k + max(1, options.batch)]
        batch = np.stack([padded(y, x, tile) for y, x in chunk])
        probs = torch.sigmoid(model(torch.from_numpy(batch).permute(0, 3, 1, 2).to(device)))[:, 0].float().cpu().numpy()
        for (y, x), p in zip(chunk, probs):
            wy = _ramp(tile, overlap, margin, y == 0, y + tile >= H)
            wx = _ramp(tile, overlap, margin, x == 0, x + tile >= W)
            win = np.outer(wy, wx).astype(np.float32)
            acc[y : y + tile, x : x + tile] += win * p
            weight[y : y + tile, x : x + tile] += win
    return (acc / np.maximum(weight, 1e-12))[:h, :w]


def _encode(pixels: np.ndarray, hdr: bool, encoding: LogEncoding, H: int, W: int, lazy: bool = False):
    """Network input padded (reflect) to ``H x W``; ``lazy`` returns ``tile(y, x, size)`` that
    encodes one tile at a time instead of the whole image (bounded memory)."""
    h, w = pixels.shape[:2]

    def crop(y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        rows = _reflect(np.arange(y0, y1), h)
        cols = _reflect(np.arange(x0, x1), w)
        if y1 <= h and x1 <= w:
            part = pixels[y0:y1, x0:x1]
        else:
            part = pixels[np.ix_(rows, cols)]
        return network_input(part, hdr, encoding)

    if lazy:
        return lambda y, x, size: crop(y, x, y + size, x + size)
    return crop(0, 0, H, W)


def _reflect(index: np.ndarray, size: int) -> np.ndarray:
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    i = np.mod(index, period)
    return np.where(i < size, i, period - i)


#: the files :func:`predict_files` writes per image, by suffix
OUTPUT_SUFFIXES = ("_mask.png", "_alpha.png", "_overlay.png")
#: overlay tint of the predicted sky (RGB) and its opacity
OVERLAY_COLOUR, OVERLAY_OPACITY = (0, 160, 255), 0.5


def overlay(preview: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``preview`` (uint8 RGB) with the sky tinted by ``alpha`` at ``OVERLAY_OPACITY`` and the
    0.5-contour of ``alpha`` drawn in red (what the seed did by hand in Photoshop)."""
    import cv2

    a = (np.clip(alpha, 0, 1) * OVERLAY_OPACITY)[..., None]
    out = preview.astype(np.float32) * (1 - a) + np.array(OVERLAY_COLOUR, np.float32) * a
    out = np.rint(out).astype(np.uint8)
    binary = (alpha >= 0.5).astype(np.uint8)
    edge = binary ^ cv2.erode(binary, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    out[edge.astype(bool)] = (255, 0, 0)
    return out


@dataclass
class PredictResult:
    written: list[Path]
    failures: list[tuple[Path, str]]


def output_paths(image: Path, out_dir: Path) -> list[Path]:
    return [out_dir / f"{image.stem}{suffix}" for suffix in OUTPUT_SUFFIXES]


def predict_files(
    images: list[Path],
    model_path: str | Path,
    out_dir: str | Path,
    options: TileOptions = TileOptions(),
    *,
    overwrite: bool = False,
    device: str = "auto",
    refine: RefineOptions | None = None,
    on_file=None,
) -> PredictResult:
    """For each image: ``<stem>_mask.png`` (uint8, 255 = sky, alpha >= 0.5), ``<stem>_alpha.png``
    (uint16 soft probability) and ``<stem>_overlay.png`` under ``out_dir``; with ``refine`` the
    soft mask is refined by :func:`refine_alpha` first.

    Every output is checked before any work (existing ones refused without ``overwrite``); a file
    that fails is reported in ``failures`` and the others carry on.

    Raises:
        IsplabError: unusable model, existing outputs, two inputs with the same stem, or an
            unwritable ``out_dir``.
    """
    from isplab.io.image import to_uint16, write_image
    from isplab.io.paths import check_writable_dir, prepare_output_file
    from isplab.workflows.sky.hdr import read_sky_image, tone_map
    from isplab.workflows.sky.model import load_sky_model

    out_dir = check_writable_dir(out_dir)
    stems = [Path(p).stem for p in images]
    duplicate = next((s for s in stems if stems.count(s) > 1), None)
    if duplicate:
        raise IsplabError(f"two inputs are named {duplicate}.*: their outputs would collide in {out_dir}")
    for image in images:
        for path in output_paths(Path(image), out_dir):
            prepare_output_file(path, overwrite=overwrite)
    model = load_sky_model(model_path)
    from isplab.engine.trainer import resolve_accelerator  # imports Lightning: after the cheap checks

    accelerator = resolve_accelerator(device)
    torch_device = "cuda" if accelerator == "cuda" else accelerator
    written, failures = [], []
    for image_path in map(Path, images):
        try:
            image = read_sky_image(image_path)
            alpha = predict_alpha(model, image.pixels, image.hdr, options, device=torch_device)
            if refine is not None:
                alpha = refine_alpha(alpha, image.pixels, image.hdr, refine)
            mask_path, alpha_path, overlay_path = output_paths(image_path, out_dir)
            write_image(mask_path, np.where(alpha >= 0.5, 255, 0).astype(np.uint8), overwrite=overwrite)
            write_image(alpha_path, to_uint16(alpha), overwrite=overwrite)
            write_image(overlay_path, overlay(tone_map(image.pixels, image.hdr), alpha), overwrite=overwrite)
            written += [mask_path, alpha_path, overlay_path]
            if on_file:
                on_file(image_path, None)
        except IsplabError as error:
            failures.append((image_path, str(error)))
            if on_file:
                on_file(image_path, str(error))
    return PredictResult(written, failures)


@dataclass(frozen=True)
class RefineOptions:
    """Guided-filter refinement of the soft mask (He et al. 2010, ``kornia.filters.guided_blur``):
    ``radius`` in pixels, ``eps`` in squared guide units; the guide is the grey tone-mapped image
    in [0, 1] (:func:`isplab.workflows.sky.hdr.tone_map`)."""

    radius: int = 4
    eps: float = 1e-3


def refine_alpha(alpha: np.ndarray, pixels: np.ndarray, hdr: bool, options: RefineOptions = RefineOptions()) -> np.ndarray:
    """``alpha`` ``(H, W)`` filtered with the image as guide, clipped to [0, 1] (float32)."""
    import kornia

    from isplab.workflows.sky.hdr import tone_map

    guide = tone_map(pixels, hdr).astype(np.float32).mean(axis=2) / 255.0
    g = torch.from_numpy(guide)[None, None]
    a = torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32))[None, None]
    out = kornia.filters.guided_blur(g, a, 2 * options.radius + 1, options.eps)
    return out[0, 0].clamp(0, 1).numpy()
