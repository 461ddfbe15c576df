"""Score a learned ISP on a split (the seed's ``test_model.py``): PSNR two ways, SSIM, MS-SSIM.

Two PSNRs, named so they cannot be confused:

- ``psnr_pooled``: the MAI challenge's number — ``20 * log10(1 / sqrt(MSE))`` with the MSE pooled
  over a batch of ``batch_size`` consecutive images (of one size), averaged over batches;
- ``psnr_mean``: the per-image PSNR averaged over images, what most papers report.

MS-SSIM (torchmetrics, 11x11 Gaussian window) needs the smaller image side to exceed
``10 * 2**(scales - 1)`` and torchmetrics' own limit (175 px for the standard 5 scales); smaller images use as many scales as
fit, with the standard weights' first ones renormalised to sum to 1; images that allow fewer than
2 scales are skipped. ``ISPTestResult.ms_ssim_note`` says which happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from isplab.engine import Report, psnr, psnr_pooled, save_png, ssim
from isplab.errors import IsplabError
from isplab.io.paths import prepare_output_dir
from isplab.workflows.isp.data import PairSource, packed_to_rgb

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

    def metrics(self) -> dict[str, float | None]:
        """The headline numbers under names that state their definitions."""
        return {
            f"psnr_pooled (challenge, batch-pooled MSE, batch={self.batch_size}) dB": self.psnr_pooled,
            "psnr_mean (per-image) dB": self.psnr_mean,
            "ssim (per-image mean)": self.ssim,
            f"ms_ssim ({self.ms_ssim_note})": self.ms_ssim,
        }

    def summary(self) -> str:
        lines = [f"{self.images} images"]
        for name, value in self.metrics().items():
            lines.append(f"{name}: {'skipped' if value is None else f'{value:.4f}'}")
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

    Raises:
        IsplabError: empty source, bad ``batch_size``, or ``out_dir`` holding outputs (without
            ``overwrite``) or not writable.
    """
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
        rows.append({
            "name": source.names[i],
            "psnr": float(psnr(pred, target)),
            "ssim": float(ssim(pred, target)),
            "ms_ssim": float(ms_ssim(pred, target, scales)) if scales >= 2 else None,
            "ms_ssim_scales": scales,
        })
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
    )
    if out is not None:
        result.report = _write_report(result, source, out)
    return result


test_isp.__test__ = False  # its name starts with "test": keep pytest from collecting it when imported


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
    report.add_table(result.rows, caption="Per image")
    for row in result.rows[:8]:
        report.add_image(out / f"{row['name']}.png", f"{row['name']}: input (raw preview) | output | target")
    return report.write()
