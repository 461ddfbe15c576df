"""Sky prediction at any size: overlapping tiles blended with a smooth window, bounded memory.

:func:`predict_alpha` is the one inference function (training validation, the CLI and tests use
it). The image is reflect-padded to a multiple of the network's ``size_multiple`` (32 for a
5-stage U-Net); tiles of side ``tile`` (cut to the padded image where it is smaller) start every
``tile - overlap`` pixels, and the last one is flush with the far edge, so every tile origin is a
multiple of ``size_multiple`` and each tile sees the same pooling grid as the whole image would
(an origin off that grid changes the output everywhere in the tile). Each tile's sigmoid output is
weighted by a window that is 0 for ``margin`` pixels at the tile's inner edges (where the tile's
own zero padding changes the output), rises as a raised cosine over the rest of the overlap and is
1 in the middle; edges on the image border keep weight 1. The result is the weighted mean.

Defaults (:class:`TileOptions`) are sized for the default ResNet-34 U-Net (5 stages), which sees
far: ``benchmarks/sky.py --tile-study`` measures how far a tile edge's zero padding changes the
output. The difference to the whole-image output stays above 1e-3 up to about 340 pixels inside
the edge with random weights (about 160 after a brief training: 3 epochs of 96 patches), and tiles
16 pixels off the pooling grid differ far more. Hence ``margin=384``, a 128-pixel raised cosine
(``overlap=896``) and 2048-pixel tiles (21 tiles for 8192x4096, about 2.2 GB of activations each
on the CPU); ``tests/workflows/sky/test_predict.py`` checks tiled == whole within 1e-3 with these
defaults. Deeper encoders (ResNet-50 and up) may see farther: measure before trusting the margin.

Memory: the image, two ``H x W`` float32 accumulators (on the compute device) and one batch of
tiles with the network's activations; tiles are encoded on the compute device one batch at a time.
The network runs in the channels_last memory format by default (the model is converted in place).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from isplab.errors import IsplabError
from isplab.workflows.sky.hdr import LogEncoding, log_encode_torch


@dataclass(frozen=True)
class TileOptions:
    """``tile``: tile side (a multiple of the model's ``size_multiple``); ``overlap``: pixels shared by
    neighbouring tiles; ``margin``: pixels of each inner tile edge given weight 0 (< overlap / 2);
    ``batch``: tiles per forward pass. ``tile=0`` runs the whole image at once."""

    tile: int = 2048
    overlap: int = 896
    margin: int = 384
    batch: int = 1


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


def predict_alpha(
    model: nn.Module,
    pixels: np.ndarray,
    hdr: bool,
    options: TileOptions = TileOptions(),
    *,
    encoding: LogEncoding | None = None,
    device: str | torch.device = "cpu",
    channels_last: bool = True,
) -> np.ndarray:
    """Soft sky probability ``(H, W)`` float32 in [0, 1] for ``pixels`` ``(H, W, 3)`` (linear HDR
    or LDR in [0, 1], on the CPU). The network runs on ``device`` (the model is moved there); each
    batch of tiles is copied there, encoded and predicted there, and blended into accumulators
    there; only the result comes back. ``channels_last``: run the network in that memory format
    (the model is converted in place), else in PyTorch's default NCHW.

    Raises:
        IsplabError: a tile size that is not a multiple of the model's ``size_multiple``, or an
            overlap/margin that does not fit the tile.
    """
    from isplab.workflows.sky.model import model_encoding

    encoding = encoding or model_encoding(model)
    device = torch.device(device)
    mult = int(getattr(model, "size_multiple", 32))
    h, w = pixels.shape[:2]
    H, W = -(-h // mult) * mult, -(-w // mult) * mult
    # channels_last (NHWC): the tiles arrive in that layout, and it ran faster on the CPU here
    # (benchmarks/sky.py --full-res [--nchw], 1024x512 in 512-pixel tiles, 3 runs each on a shared
    # machine: 10-27 s against 29-40 s)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.eval().to(device, memory_format=layout)
    tile, overlap, margin = options.tile, options.overlap, options.margin

    def load(boxes: list[tuple[int, int]], th: int, tw: int) -> torch.Tensor:
        parts = [torch.from_numpy(_padded_crop(pixels, y, x, th, tw)) for y, x in boxes]
        batch = torch.stack(parts).to(device, non_blocking=True).permute(0, 3, 1, 2)  # NCHW view of NHWC memory
        batch = batch.contiguous(memory_format=layout)
        return log_encode_torch(batch, encoding) if hdr else batch

    with torch.inference_mode():
        if tile <= 0 or (tile >= H and tile >= W):
            out = torch.sigmoid(model(load([(0, 0)], H, W)))[0, 0, :h, :w]
            return np.ascontiguousarray(out.float().cpu().numpy())
        if tile % mult:
            raise IsplabError(f"tile {tile} must be a multiple of {mult} (the model's size multiple)")
        if not (0 <= 2 * margin < overlap < tile) or (tile - overlap) % mult:
            raise IsplabError(
                f"bad tiling: need 0 <= 2*margin < overlap < tile and tile - overlap a multiple of {mult}, "
                f"got tile {tile}, overlap {overlap}, margin {margin}"
            )
        th, tw = min(tile, H), min(tile, W)
        acc = torch.zeros((H, W), dtype=torch.float32, device=device)
        weight = torch.zeros((H, W), dtype=torch.float32, device=device)
        windows: dict[tuple[int, bool, bool], torch.Tensor] = {}

        def window(length: int, first: bool, last: bool) -> torch.Tensor:
            key = (length, first, last)
            if key not in windows:
                ramp = _ramp(length, overlap, margin, first, last) if length == tile else np.ones(length)
                windows[key] = torch.from_numpy(ramp.astype(np.float32)).to(device)
            return windows[key]

        ys, xs = _starts(H, th, tile - overlap), _starts(W, tw, tile - overlap)
        boxes = [(y, x) for y in ys for x in xs]
        step = max(1, options.batch)
        for k in range(0, len(boxes), step):
            chunk = boxes[k : k + step]
            probs = torch.sigmoid(model(load(chunk, th, tw)))[:, 0].float()
            for (y, x), p in zip(chunk, probs):
                win = torch.outer(window(th, y == 0, y + th >= H), window(tw, x == 0, x + tw >= W))
                acc[y : y + th, x : x + tw].addcmul_(win, p)
                weight[y : y + th, x : x + tw].add_(win)
        acc.div_(weight.clamp_(min=1e-12))
        del weight
        return np.ascontiguousarray(acc[:h, :w].cpu().numpy())


def _padded_crop(pixels: np.ndarray, y: int, x: int, th: int, tw: int) -> np.ndarray:
    """``pixels[y:y+th, x:x+tw]`` as contiguous float32, reflect-padded where it passes the far edges."""
    h, w = pixels.shape[:2]
    if y + th <= h and x + tw <= w:
        part = pixels[y : y + th, x : x + tw]
    else:
        part = pixels[np.ix_(_reflect(np.arange(y, y + th), h), _reflect(np.arange(x, x + tw), w))]
    return np.ascontiguousarray(part, dtype=np.float32)


def _reflect(index: np.ndarray, size: int) -> np.ndarray:
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    i = np.mod(index, period)
    return np.where(i < size, i, period - i)


#: the files :func:`predict_files` writes per image, by suffix (``_alpha.exr`` with ``alpha="exr"``,
#: ``_replaced.exr`` with a replacement sky)
OUTPUT_SUFFIXES = ("_mask.png", "_alpha.png", "_overlay.png")
#: overlay tint of the predicted sky (RGB) and its opacity
OVERLAY_COLOUR, OVERLAY_OPACITY = (0, 160, 255), 0.5
#: Rec. 709 luminance weights (linear RGB), for ``match_exposure``
LUMINANCE = (0.2126, 0.7152, 0.0722)


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


def read_replacement(path: str | Path) -> np.ndarray:
    """A replacement sky panorama ``(H, W, 3)`` float32, read as :func:`~isplab.workflows.sky.hdr.read_sky_image`
    reads images (so NaN, Inf or negative HDR values and unreadable files are refused, naming it)."""
    from isplab.workflows.sky.hdr import read_sky_image

    try:
        return read_sky_image(path).pixels
    except IsplabError as error:
        raise IsplabError(f"replacement sky panorama: {error}") from None


def resize_panorama(panorama: np.ndarray, width: int, height: int) -> np.ndarray:
    """``panorama`` resized to ``width x height`` (an equirectangular panorama maps onto another by a
    plain resize): area averaging when shrinking, bilinear when enlarging; float32, a new array."""
    import cv2

    h, w = panorama.shape[:2]
    if (w, h) == (width, height):
        return np.array(panorama, dtype=np.float32, copy=True)
    shrink = width * height < w * h
    return cv2.resize(panorama, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR).astype(np.float32, copy=False)


def exposure_scale(pixels: np.ndarray, replacement: np.ndarray, alpha: np.ndarray) -> float:
    """The factor that makes the replacement's median luminance over the predicted sky
    (``alpha >= 0.5``) equal the image's median luminance there; 1 when there is no sky or the
    replacement is black there."""
    sky = alpha >= 0.5
    if not sky.any():
        return 1.0
    weights = np.asarray(LUMINANCE, np.float32)
    original = float(np.median(pixels[sky] @ weights))
    new = float(np.median(replacement[sky] @ weights))
    return original / new if new > 0 else 1.0


def replace_sky(pixels: np.ndarray, alpha: np.ndarray, replacement: np.ndarray, *, match_exposure: bool = False) -> np.ndarray:
    """``alpha * R + (1 - alpha) * pixels`` per pixel, ``R`` the replacement panorama resized to the
    image (:func:`resize_panorama`) and, with ``match_exposure``, scaled by :func:`exposure_scale`.
    ``(H, W, 3)`` float32, computed in row blocks (one extra image-sized array)."""
    h, w = alpha.shape
    out = resize_panorama(replacement, w, h)
    if match_exposure:
        out *= np.float32(exposure_scale(pixels, out, alpha))
    for y in range(0, h, 256):
        a = np.clip(alpha[y : y + 256], 0, 1)[..., None].astype(np.float32)
        block = out[y : y + 256]
        block *= a
        block += pixels[y : y + 256] * (1 - a)
    return out


@dataclass(frozen=True)
class OutputOptions:
    """What :func:`predict_files` writes besides the mask and the overlay: the soft alpha as a
    16-bit PNG (``alpha="png"``) or a float32 single-channel EXR (``"exr"``, channel ``Y``); with
    ``replace_sky`` (a panorama file) also ``<stem>_replaced.exr``, the image with its sky replaced
    (:func:`replace_sky`, ``match_exposure`` as there)."""

    alpha: str = "png"
    replace_sky: Path | None = None
    match_exposure: bool = False


@dataclass
class PredictResult:
    written: list[Path]
    failures: list[tuple[Path, str]]


def output_paths(image: Path, out_dir: Path, outputs: OutputOptions = OutputOptions()) -> dict[str, Path]:
    """``{"mask", "alpha", "overlay"[, "replaced"]}`` -> the files written for ``image``."""
    stem = Path(image).stem
    paths = {"mask": out_dir / f"{stem}_mask.png", "alpha": out_dir / f"{stem}_alpha.{outputs.alpha}", "overlay": out_dir / f"{stem}_overlay.png"}
    if outputs.replace_sky is not None:
        paths["replaced"] = out_dir / f"{stem}_replaced.exr"
    return paths


def predict_files(
    images: list[Path],
    model_path: str | Path,
    out_dir: str | Path,
    options: TileOptions = TileOptions(),
    *,
    overwrite: bool = False,
    device: str = "auto",
    refine: RefineOptions | None = None,
    outputs: OutputOptions = OutputOptions(),
    on_file=None,
) -> PredictResult:
    """For each image: ``<stem>_mask.png`` (uint8, 255 = sky, alpha >= 0.5), ``<stem>_alpha.png``
    (uint16 soft probability; ``.exr`` float32 with ``outputs.alpha="exr"``), ``<stem>_overlay.png``
    and, with ``outputs.replace_sky``, ``<stem>_replaced.exr`` under ``out_dir``; with ``refine`` the
    soft mask is refined by :func:`refine_alpha` first.

    Every output is checked, and the replacement panorama read, before any work (existing outputs
    refused without ``overwrite``); a file that fails is reported in ``failures`` and the others
    carry on.

    Raises:
        IsplabError: unusable model, existing outputs, two inputs with the same stem, an unwritable
            ``out_dir``, an unknown alpha format or an unusable replacement panorama.
    """
    from isplab.io.image import to_uint16, write_image
    from isplab.io.paths import check_writable_dir, prepare_output_file
    from isplab.workflows.sky.hdr import read_sky_image, tone_map
    from isplab.workflows.sky.model import load_sky_model

    if outputs.alpha not in ("png", "exr"):
        raise IsplabError(f"unknown alpha format {outputs.alpha!r}: expected png or exr")
    out_dir = check_writable_dir(out_dir)
    stems = [Path(p).stem for p in images]
    duplicate = next((s for s in stems if stems.count(s) > 1), None)
    if duplicate:
        raise IsplabError(f"two inputs are named {duplicate}.*: their outputs would collide in {out_dir}")
    for image in images:
        for path in output_paths(Path(image), out_dir, outputs).values():
            prepare_output_file(path, overwrite=overwrite)
    replacement = read_replacement(outputs.replace_sky) if outputs.replace_sky is not None else None
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
            paths = output_paths(image_path, out_dir, outputs)
            write_image(paths["mask"], np.where(alpha >= 0.5, 255, 0).astype(np.uint8), overwrite=overwrite)
            soft = alpha.astype(np.float32) if outputs.alpha == "exr" else to_uint16(alpha)
            write_image(paths["alpha"], soft, overwrite=overwrite)
            write_image(paths["overlay"], overlay(tone_map(image.pixels, image.hdr), alpha), overwrite=overwrite)
            if replacement is not None:
                replaced = replace_sky(image.pixels, alpha, replacement, match_exposure=outputs.match_exposure)
                write_image(paths["replaced"], replaced, overwrite=overwrite)
            written += list(paths.values())
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
