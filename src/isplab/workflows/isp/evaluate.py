"""Score a learned ISP on a split (the seed's ``test_model.py``): PSNR two ways, SSIM, MS-SSIM, ΔE2000.

Two PSNRs, named so they cannot be confused:

- ``psnr_pooled``: the MAI challenge's number — ``20 * log10(1 / sqrt(MSE))`` with the MSE pooled
  over a batch of ``batch_size`` consecutive images (of one size), averaged over batches;
- ``psnr_mean``: the per-image PSNR averaged over images, what most papers report.

MS-SSIM (torchmetrics, 11x11 Gaussian window) needs the smaller image side to exceed
``10 * 2**(scales - 1)`` and torchmetrics' own limit (175 px for the standard 5 scales); smaller images use as many scales as
fit, with the standard weights' first ones renormalised to sum to 1; images that allow fewer than
2 scales are skipped. ``ISPTestResult.ms_ssim_note`` says which happened.

Colour accuracy is the CIEDE2000 difference (:func:`isplab.engine.metrics.delta_e2000`) per image
(mean over its pixels) and pooled (mean over every pixel of every image); the report lists the
worst images by ΔE2000.

Baselines (:data:`BASELINES`, raws with metadata only: the ``dng`` packing) render the same raws
classically and are scored the same way:

- ``oracle``: isplab's :func:`~isplab.isp.pipeline.render` with the file's as-shot white balance
  and colour matrix (what a camera that knows its illuminant does);
- ``greyworld``: the same pipeline without metadata: grey-world white balance (the mean of each
  colour plane made equal) and the colour matrix of an average training camera
  (:func:`generic_xyz_to_camera`);
- ``greyworld-auto``: ``greyworld`` without the file's exposure either — what a camera that
  reads no metadata at all renders classically, the fair reference for a **blind** learned model:
  the gain brings the grey-world-balanced green mean to
  :data:`isplab.models.isp_prior.EXPOSURE_TARGET` (the auto-exposure of the blind classical prior,
  :class:`isplab.models.isp_prior.ClassicalPrior`, before any training);
- ``libraw``: LibRaw through rawpy (AHD demosaicking, camera white balance, its own colour
  matrix, linear 16-bit sRGB output), then the same brightness, sRGB gamma and tone curve.

Every baseline but ``greyworld-auto`` brightens by the raw's own exposure, ``2 ** BaselineExposure`` (the DNG tag, which
``isplab data synth`` writes as ``log2`` of the sample's brightness gain; 0 EV when a file has
none), so the baselines differ from the target in colour, demosaicking and noise, not in
exposure, and they read nothing but the raw file: a metadata-aware model gets the same
exposure (:func:`isplab.workflows.isp.data.raw_colour_transform`). Data folders written before
isplab wrote the tag read as 0 EV: regenerate them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from isplab.engine import Report, psnr, psnr_pooled, save_png, ssim
from isplab.engine.metrics import delta_e2000
from isplab.errors import IsplabError
from isplab.io.paths import prepare_output_dir
from isplab.workflows.isp.data import PairSource, packed_to_rgb

#: classical renderings scored beside the model (see the module docstring)
BASELINES = ("oracle", "greyworld", "libraw", "greyworld-auto")
#: how many of the worst images (by ΔE2000) the summary and the report list
WORST = 5

#: torchmetrics' (and Wang et al.'s) weights of the 5 MS-SSIM scales
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_WINDOW = 11


@dataclass
class ISPTestResult:
    """Scores of a model on a source; ``rows`` has one dict per image (name, psnr, ssim, ms_ssim)."""

    psnr_pooled: float
    psnr_mean: float
    ssim: float
    ms_ssim: float | None
    ms_ssim_note: str
    batch_size: int
    images: int
    rows: list[dict] = field(default_factory=list)
    report: Path | None = None
    delta_e2000: float | None = None
    delta_e2000_pooled: float | None = None
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)

    def worst(self, count: int = WORST) -> list[dict]:
        """The ``count`` images with the largest ΔE2000 (worst first)."""
        return sorted(self.rows, key=lambda row: -row["delta_e2000"])[:count]

    def metrics(self) -> dict[str, float | None]:
        """The headline numbers under names that state their definitions."""
        return {
            f"psnr_pooled (challenge, batch-pooled MSE, batch={self.batch_size}) dB": self.psnr_pooled,
            "psnr_mean (per-image) dB": self.psnr_mean,
            "ssim (per-image mean)": self.ssim,
            f"ms_ssim ({self.ms_ssim_note})": self.ms_ssim,
            "delta_e2000 (per-image mean of pixel means)": self.delta_e2000,
            "delta_e2000_pooled (mean over all pixels)": self.delta_e2000_pooled,
        }

    def comparison(self) -> list[dict]:
        """One row per method (the model, then each baseline): PSNR mean, SSIM, ΔE2000 per image and pooled."""
        rows = [{"method": "model", "psnr_mean": self.psnr_mean, "ssim": self.ssim, "delta_e2000": self.delta_e2000,
                 "delta_e2000_pooled": self.delta_e2000_pooled}]
        rows += [{"method": name, **scores} for name, scores in self.baselines.items()]
        return rows

    def summary(self) -> str:
        lines = [f"{self.images} images"]
        for name, value in self.metrics().items():
            lines.append(f"{name}: {'skipped' if value is None else f'{value:.4f}'}")
        if self.baselines:
            width = max(len(row["method"]) for row in self.comparison())
            lines.append(f"{'method':<{width}} PSNR mean  SSIM    ΔE2000  ΔE2000 pooled")
            for row in self.comparison():
                lines.append(f"{row['method']:<{width}} {row['psnr_mean']:9.2f}  {row['ssim']:.4f}  {row['delta_e2000']:6.2f}"
                             f"  {row['delta_e2000_pooled']:6.2f}")
        worst = ", ".join(f"{row['name']} ({row['delta_e2000']:.2f})" for row in self.worst())
        lines.append(f"worst images by ΔE2000: {worst}")
        if self.report is not None:
            lines.append(f"report: {self.report}")
        return "\n".join(lines)


def ms_ssim_scales(height: int, width: int) -> int:
    """How many MS-SSIM scales (at most 5) images of this size allow.

    The coarsest scale must still hold the 11-px window (side > ``10 * 2**(scales - 1)``), and
    torchmetrics' own size check (``side // (scales - 1)**2 > 10``) must pass.
    """
    side = min(height, width)
    scales = len(MS_SSIM_BETAS)
    window = MS_SSIM_WINDOW - 1
    while scales > 0 and not (side > window * 2 ** (scales - 1) and side // max(1, scales - 1) ** 2 > window):
        scales -= 1
    return scales


def ms_ssim(pred: torch.Tensor, target: torch.Tensor, scales: int) -> torch.Tensor:
    """Per-image MS-SSIM ``(B,)`` of ``(B, 3, H, W)`` images in [0, 1] over ``scales`` scales.

    Negative contrast terms are clipped at 0 (torchmetrics' ``normalize="relu"``) so that poor
    outputs give a small number instead of NaN.
    """
    betas = torch.tensor(MS_SSIM_BETAS[:scales], dtype=torch.float64)
    betas = tuple((betas / betas.sum()).tolist())
    return multiscale_structural_similarity_index_measure(
        pred, target, data_range=1.0, betas=betas, normalize="relu", reduction="none"
    )


def predict(model: nn.Module, packed: torch.Tensor) -> torch.Tensor:
    """Run ``model`` on ``(B, 4, h, w)`` of any size: reflect-pad to its ``size_multiple``, crop the output.

    Returns ``(B, 3, 2h, 2w)`` clipped to [0, 1].
    """
    multiple = getattr(model, "size_multiple", 1)
    h, w = packed.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h or pad_w:
        packed = F.pad(packed, (0, pad_w, 0, pad_h), mode="reflect")
    return model(packed)[..., : 2 * h, : 2 * w].clamp(0.0, 1.0)


@torch.no_grad()
def test_isp(
    model: nn.Module,
    source: PairSource,
    out_dir: str | Path | None = None,
    max_images: int | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    overwrite: bool = False,
    baselines: tuple[str, ...] | list[str] = (),
) -> ISPTestResult:
    """Score ``model`` on every pair of ``source`` (or the first ``max_images``).

    Args:
        model: a network from :func:`isplab.models.isp.build_isp_model` (put in eval mode).
        source: the pairs, from :func:`isplab.workflows.isp.data.open_pairs`.
        out_dir: when given, ``<name>.png`` side by side (input preview | output | target) per image
            and ``report.html`` are written there.
        max_images: score only this many.
        batch_size: images pooled per ``psnr_pooled`` batch (a batch also ends where the image size changes).
        device: where to run; default: the model's device.
        overwrite: replace ``report.html`` and images already in ``out_dir`` (refused otherwise,
            before any image is scored).
        baselines: names from :data:`BASELINES` to score on the same raws (``dng`` packing only).

    Raises:
        IsplabError: empty source, bad ``batch_size``, unknown baseline or baselines on raws
            without metadata, or ``out_dir`` holding outputs (without ``overwrite``) or not writable.
    """
    baselines = check_baselines(baselines, source)
    if batch_size < 1:
        raise IsplabError(f"batch_size must be at least 1, got {batch_size}")
    count = len(source) if max_images is None else min(max_images, len(source))
    if count == 0:
        raise IsplabError(f"no images to test in {source.root}")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        names = ["report.html", *(f"{name}.png" for name in source.names[:count])]
        prepare_output_dir(out, overwrite=overwrite, names=names, what="output folder")
    model = model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device)

    rows: list[dict] = []
    pooled: list[float] = []
    colour_sum, colour_pixels = 0.0, 0
    baseline_sums = {name: {"psnr": 0.0, "ssim": 0.0, "delta_e2000": 0.0, "de_pixels": 0.0} for name in baselines}
    batch: list[tuple[torch.Tensor, torch.Tensor]] = []

    def close_batch() -> None:
        if batch:
            preds, targets = (torch.cat(part) for part in zip(*batch))
            pooled.append(float(psnr_pooled(preds, targets)))
            batch.clear()

    for i in range(count):
        packed, target = source.load(i)
        packed, target = packed[None].to(device), target[None].to(device)
        pred = predict(model, packed)
        scales = ms_ssim_scales(*target.shape[-2:])
        colour_map = delta_e2000(pred, target, reduction="pixels")
        colour_sum += float(colour_map.sum())
        colour_pixels += colour_map.numel()
        row = {
            "name": source.names[i],
            "psnr": float(psnr(pred, target)),
            "ssim": float(ssim(pred, target)),
            "ms_ssim": float(ms_ssim(pred, target, scales)) if scales >= 2 else None,
            "ms_ssim_scales": scales,
            "delta_e2000": float(colour_map.mean()),
        }
        for name in baselines:
            rendered = baseline_render(name, source.raws[i])
            rendered = _crop_like(rendered, target)[None].to(device)
            sums = baseline_sums[name]
            de_map = delta_e2000(rendered, target, reduction="pixels")
            row[f"{name}_psnr"] = float(psnr(rendered, target))
            row[f"{name}_delta_e2000"] = float(de_map.mean())
            sums["psnr"] += row[f"{name}_psnr"]
            sums["ssim"] += float(ssim(rendered, target))
            sums["delta_e2000"] += row[f"{name}_delta_e2000"]
            sums["de_pixels"] += float(de_map.sum())
        rows.append(row)
        if batch and (len(batch) == batch_size or batch[0][1].shape != target.shape):
            close_batch()
        batch.append((pred, target))
        if out is not None:
            preview = _preview(packed[0].cpu(), source.packing, target.shape[-2:])
            save_png(out / f"{source.names[i]}.png", torch.cat([preview, pred[0].cpu(), target[0].cpu()], dim=-1))
    close_batch()

    scored = [row["ms_ssim"] for row in rows if row["ms_ssim"] is not None]
    used = sorted({row["ms_ssim_scales"] for row in rows})
    if not scored:
        note = "skipped: images of at most 20 px allow fewer than 2 scales"
    elif used == [len(MS_SSIM_BETAS)]:
        note = f"{len(MS_SSIM_BETAS)} scales"
    else:
        note = (f"{'/'.join(map(str, used))} scales: images too small for {len(MS_SSIM_BETAS)}, weights renormalised"
                f"{'; some skipped' if len(scored) < len(rows) else ''}")
    result = ISPTestResult(
        psnr_pooled=sum(pooled) / len(pooled),
        psnr_mean=sum(row["psnr"] for row in rows) / len(rows),
        ssim=sum(row["ssim"] for row in rows) / len(rows),
        ms_ssim=sum(scored) / len(scored) if scored else None,
        ms_ssim_note=note,
        batch_size=batch_size,
        images=count,
        rows=rows,
        delta_e2000=sum(row["delta_e2000"] for row in rows) / len(rows),
        delta_e2000_pooled=colour_sum / colour_pixels,
        baselines={
            name: {"psnr_mean": sums["psnr"] / count, "ssim": sums["ssim"] / count,
                   "delta_e2000": sums["delta_e2000"] / count, "delta_e2000_pooled": sums["de_pixels"] / colour_pixels}
            for name, sums in baseline_sums.items()
        },
    )
    if out is not None:
        result.report = _write_report(result, source, out)
    return result


test_isp.__test__ = False  # its name starts with "test": keep pytest from collecting it when imported


def check_baselines(names, source: PairSource) -> tuple[str, ...]:
    """Validate baseline names; they need raws with metadata (the ``dng`` packing)."""
    names = tuple(names)
    unknown = [name for name in names if name not in BASELINES]
    if unknown:
        raise IsplabError(f"unknown baseline {unknown[0]!r}: expected one of {', '.join(BASELINES)}")
    if names and source.packing != "dng":
        raise IsplabError(
            f"baselines need raws with white balance and colour matrix (DNG folders); {source.root} holds "
            f"{source.layout} raws without metadata"
        )
    return names


def generic_xyz_to_camera() -> torch.Tensor:
    """The mean XYZ -> camera matrix of the training cameras (:mod:`isplab.data.cameras`), float64;
    the one the blind classical prior uses too (:func:`isplab.models.isp_prior.generic_xyz_to_camera`)."""
    from isplab.models.isp_prior import generic_xyz_to_camera as generic

    return generic()


def grey_world_gains(mosaic: torch.Tensor, pattern: str) -> torch.Tensor:
    """Grey-world white balance of a normalised ``(H, W)`` mosaic: ``(3,)`` gains, green = 1."""
    from isplab.isp import bayer

    planes = bayer.pack(mosaic, pattern)  # R, Gr, Gb, B
    means = planes.flatten(1).mean(dim=1).clamp_min(1e-6)
    green = (means[1] + means[2]) / 2
    return torch.stack([green / means[0], torch.ones_like(green), green / means[3]])


def auto_exposure_gain(mosaic: torch.Tensor, pattern: str) -> float:
    """The ``greyworld-auto`` gain of a normalised ``(H, W)`` mosaic: middle grey over its mean green.

    After grey-world white balance every plane's mean equals the green mean, so this is the
    blind classical prior's auto-exposure (:meth:`isplab.models.isp_prior.ClassicalPrior.white_balance_gains`).
    """
    from isplab.isp import bayer
    from isplab.models.isp_prior import EXPOSURE_TARGET, MIN_PLANE_MEAN

    planes = bayer.pack(mosaic, pattern)  # R, Gr, Gb, B
    green = float((planes[1].mean() + planes[2].mean()) / 2)
    return EXPOSURE_TARGET / max(green, MIN_PLANE_MEAN)


def baseline_render(name: str, path: str | Path, brightness: float | None = None) -> torch.Tensor:
    """The ``(3, H, W)`` sRGB of raw file ``path`` by baseline ``name`` (see the module docstring).

    ``brightness``: the linear gain; ``None`` (the default) takes the file's own,
    ``2 ** BaselineExposure`` (:attr:`isplab.io.raw.RawImage.exposure_gain`).
    """
    from isplab.isp.color import camera_to_srgb_matrix
    from isplab.isp.gamma import linear_to_srgb
    from isplab.isp.pipeline import render
    from isplab.isp.tone import smoothstep_tone
    from isplab.io.raw import read_raw
    from isplab.workflows.isp.data import read_mosaic

    if name not in BASELINES:
        raise IsplabError(f"unknown baseline {name!r}: expected one of {', '.join(BASELINES)}")
    frame = read_raw(path)
    if brightness is None:
        brightness = frame.exposure_gain
    if name == "libraw":
        import rawpy

        try:
            with rawpy.imread(str(path)) as raw:
                rgb = raw.postprocess(
                    use_camera_wb=True, no_auto_bright=True, adjust_maximum_thr=0.0, output_color=rawpy.ColorSpace.sRGB,
                    gamma=(1, 1), output_bps=16, user_flip=0, demosaic_algorithm=rawpy.DemosaicAlgorithm.AHD,
                )
        except (rawpy.LibRawError, OSError) as error:
            raise IsplabError(f"{path}: LibRaw cannot render it ({error})") from None
        linear = torch.from_numpy(rgb.astype(np.float32) / 65535.0).permute(2, 0, 1)
        return smoothstep_tone(linear_to_srgb((linear * brightness).clamp(0, 1)))
    mosaic, pattern = read_mosaic(path, "dng")
    if name == "oracle":
        if frame.color_matrix is None:
            raise IsplabError(f"{path}: no colour matrix in the file, so no oracle rendering")
        gains = 1.0 / torch.as_tensor(frame.as_shot_neutral, dtype=torch.float64)
        ccm = camera_to_srgb_matrix(torch.as_tensor(frame.color_matrix, dtype=torch.float64))
    elif name in ("greyworld", "greyworld-auto"):
        gains = grey_world_gains(mosaic.double(), pattern)
        ccm = camera_to_srgb_matrix(generic_xyz_to_camera())
        if name == "greyworld-auto":
            brightness = auto_exposure_gain(mosaic.double(), pattern)
    else:
        raise IsplabError(f"unknown baseline {name!r}: expected one of {', '.join(BASELINES)}")
    out = render(mosaic.double()[None, None], pattern, (gains / gains[1] * brightness)[None], ccm[None])
    return out[0].float()


def _crop_like(image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Centre-crop ``(3, H, W)`` ``image`` to ``target``'s size (LibRaw may trim a border)."""
    h, w = target.shape[-2:]
    if image.shape[-2] < h or image.shape[-1] < w:
        raise IsplabError(f"a baseline rendering is {tuple(image.shape[-2:])}, smaller than its target {(h, w)}")
    top, left = (image.shape[-2] - h) // 2, (image.shape[-1] - w) // 2
    return image[:, top : top + h, left : left + w]


def _preview(packed: torch.Tensor, packing: str, size: torch.Size) -> torch.Tensor:
    """The raw input as a viewable ``(3, H, W)``: half-size RGB, brightened and gamma-encoded, upsampled."""
    rgb = packed_to_rgb(packed, packing)
    rgb = (rgb / rgb.quantile(0.99).clamp_min(1e-6)).clamp(0.0, 1.0) ** (1 / 2.2)
    return F.interpolate(rgb[None], size=tuple(size), mode="nearest")[0]


def _write_report(result: ISPTestResult, source: PairSource, out: Path) -> Path:
    report = Report(f"Learned ISP test: {source.root}", out)
    report.add_text(
        "psnr_pooled is the MAI challenge's PSNR (MSE pooled over each batch of "
        f"{result.batch_size} images, averaged over batches); psnr_mean averages per-image PSNRs."
    )
    report.add_metrics(result.metrics())
    if result.baselines:
        report.add_table(result.comparison(), caption="The model and the classical baselines on the same raws")
    report.add_table(result.worst(), caption=f"The {min(WORST, len(result.rows))} worst images by ΔE2000")
    report.add_table(result.rows, caption="Per image")
    for row in result.rows[:8]:
        report.add_image(out / f"{row['name']}.png", f"{row['name']}: input (raw preview) | output | target")
    return report.write()
