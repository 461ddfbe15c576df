"""Demo section ``data``: synthesise raws, render them with the classical differentiable ISP.

For each synthetic DNG the report shows the raw mosaic (false colour), isplab's rendering, the
ground truth and LibRaw's own rendering of the same file, with three numbers:

- *round trip*: noise-free unprocess -> render vs. the source, the pipeline's invertibility;
- *render*: the noisy DNG as written, read back and rendered, vs. the ground truth;
- *LibRaw agreement*: isplab's linear rendering (no tone curve) vs. rawpy/LibRaw's rendering of
  the same DNG with the camera's white balance and colour matrix — an independent check that the
  DNG writer, the metadata and the colour pipeline agree with another tool.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import rawpy  # noqa: E402
import torch  # noqa: E402

from isplab.data.synth import SensorSpec, synthesize_dataset, synthesize_sample  # noqa: E402
from isplab.data.unprocess import unprocess  # noqa: E402
from isplab.demo import stage  # noqa: E402
from isplab.engine.metrics import psnr, ssim  # noqa: E402
from isplab.engine.report import Report  # noqa: E402
from isplab.io.raw import read_raw  # noqa: E402
from isplab.isp import bayer  # noqa: E402
from isplab.isp.color import camera_to_srgb_matrix  # noqa: E402
from isplab.isp.levels import normalize_mosaic  # noqa: E402
from isplab.isp.pipeline import render  # noqa: E402
from isplab.isp.white_balance import gains_from_neutral  # noqa: E402

NAME = "data"


def mosaic_preview(mosaic: np.ndarray, pattern: str, black: float, white: float) -> np.ndarray:
    """False-colour view of a Bayer mosaic: each photosite shown in its filter's colour, gamma 1/2.2.

    Args:
        mosaic: ``(H, W)`` raw DN.

    Returns:
        ``(H, W, 3)`` float in [0, 1].
    """
    x = np.clip((mosaic.astype(np.float32) - black) / (white - black), 0, 1) ** (1 / 2.2)
    preview = np.zeros((*x.shape, 3), np.float32)
    for i, channel in enumerate(bayer.channel_index(pattern)):
        r, c = divmod(i, 2)
        preview[r::2, c::2, channel] = x[r::2, c::2]
    return preview


def libraw_render(path: Path) -> np.ndarray:
    """LibRaw's linear-to-sRGB rendering of a raw (camera WB, file colour matrix, no auto-bright)."""
    with rawpy.imread(str(path)) as raw:
        rgb = raw.postprocess(
            use_camera_wb=True,
            no_auto_bright=True,
            adjust_maximum_thr=0.0,  # LibRaw otherwise rescales to the file's brightest pixel
            output_color=rawpy.ColorSpace.sRGB,
            gamma=(2.4, 12.92),
            output_bps=16,
            user_flip=0,
            demosaic_algorithm=rawpy.DemosaicAlgorithm.AHD,
        )
    return rgb.astype(np.float32) / 65535.0


def _chw(image: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().to(device)


def _hwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy()


def section(
    out: Path, report: Report, *, seed: int, device: str, count: int = 6, size: tuple[int, int] = (512, 384)
) -> None:
    """Synthesise ``count`` DNGs into ``out/data/synth``, render each with isplab and LibRaw, report."""
    folder = Path(out) / NAME
    device = torch.device(device)
    sensor = SensorSpec()
    stage(f"synthesising {count} DNGs of {size[0]}x{size[1]} by unprocessing sRGB images")
    dataset = synthesize_dataset(folder / "synth", count, seed=seed, size=size, sensor=sensor, overwrite=True,
                                 progress=False)

    stage("rendering them with isplab's differentiable ISP and with LibRaw")
    rows, figures = [], []
    for sample in dataset.samples:
        dng = dataset.out_dir / sample["file"]
        raw = read_raw(dng)
        mosaic = torch.from_numpy(raw.mosaic.astype(np.float32))[None, None].to(device)
        normalised = normalize_mosaic(mosaic, torch.tensor(raw.black_level, dtype=torch.float32, device=device),
                                      float(raw.white_level), raw.cfa_pattern)
        gains = gains_from_neutral(torch.tensor(raw.as_shot_neutral, dtype=torch.float32, device=device))[None]
        ccm = camera_to_srgb_matrix(torch.tensor(raw.color_matrix, dtype=torch.float32, device=device))[None]
        brightness = raw.exposure_gain  # the DNG's BaselineExposure, 2 ** EV
        rendered = render(normalised, raw.cfa_pattern, gains * brightness, ccm)
        linear_view = render(normalised, raw.cfa_pattern, gains, ccm, tone=False)

        _, target, params, _, _ = synthesize_sample(sample["index"], seed, size, sensor, noise=False)
        target_t = _chw(target, device)
        clean = unprocess(
            target_t,
            torch.tensor(params.ccm, dtype=torch.float32, device=device)[None],
            torch.tensor(params.wb_gains, dtype=torch.float32, device=device)[None],
            torch.tensor([params.brightness_gain], dtype=torch.float32, device=device),
            sensor.pattern,
        )
        round_trip = render(clean, sensor.pattern, gains * brightness, ccm)
        libraw = libraw_render(dng)
        libraw_t = _chw(libraw, device)

        rows.append(
            {
                "file": sample["file"],
                "source": sample["source"],
                "illuminant (K)": round(sample["illuminant_cct"]),
                "ISO": int(sample["iso"]),
                "round trip PSNR (dB)": float(psnr(round_trip, target_t)),
                "render PSNR (dB)": float(psnr(rendered, target_t)),
                "render SSIM": float(ssim(rendered, target_t)),
                "LibRaw agreement PSNR (dB)": float(psnr(linear_view, libraw_t)),
            }
        )
        figure, axes = plt.subplots(1, 4, figsize=(16, 3.6))
        panels = [
            ("raw mosaic (false colour)", mosaic_preview(raw.mosaic, raw.cfa_pattern, raw.black_level.mean(), raw.white_level)),
            ("isplab render", _hwc(rendered)),
            ("ground truth", target),
            ("LibRaw render (no tone curve)", libraw),
        ]
        for axis, (title, image) in zip(axes, panels):
            axis.imshow(np.clip(image, 0, 1))
            axis.set_title(title)
            axis.axis("off")
        figure.suptitle(f"{sample['file']} — {sample['source']}, {rows[-1]['illuminant (K)']} K, ISO {rows[-1]['ISO']}")
        figure.tight_layout()
        path = folder / f"{Path(sample['file']).stem}.png"
        figure.savefig(path, dpi=120)
        plt.close(figure)
        figures.append((path, sample["file"]))

    report.add_heading("Synthetic raws through the classical differentiable ISP (isplab data, isplab.isp)")
    report.add_text(
        f"{count} DNGs synthesised by unprocessing sRGB sources (Brooks et al. 2019) into "
        f"{dataset.out_dir.relative_to(report.out_dir)}, then read back with rawpy and rendered by "
        "isplab.isp.render (black level, white balance, Malvar demosaic, colour matrix, sRGB gamma, "
        "tone curve). Round trip: the same sample without noise, unprocessed and rendered in memory. "
        "LibRaw agreement: isplab's rendering without tone curve or brightness gain against "
        "rawpy.postprocess of the same DNG."
    )
    report.add_table(rows, caption="Per sample")
    means = {key: float(np.mean([r[key] for r in rows])) for key in rows[0] if "PSNR" in key or "SSIM" in key}
    report.add_metrics({f"mean {k}": v for k, v in means.items()}, caption="Means")
    figure, axis = plt.subplots(figsize=(8, 3.5))
    x = np.arange(len(rows))
    for offset, key in zip((-0.25, 0, 0.25), ("round trip PSNR (dB)", "render PSNR (dB)", "LibRaw agreement PSNR (dB)")):
        axis.bar(x + offset, [r[key] for r in rows], width=0.25, label=key)
    axis.set_xticks(x, [f"{r['file']}\n{r['source']}" for r in rows], fontsize=8)
    axis.set_ylabel("PSNR (dB)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(folder / "psnr.png", dpi=120)
    plt.close(figure)
    report.add_image(folder / "psnr.png", caption="PSNR per sample")
    for path, name in figures:
        report.add_image(path, caption=name)
    if dataset.failures:
        report.add_table(dataset.failures, caption="Failed samples")
