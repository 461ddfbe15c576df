"""``make demo``: synthesise raws, render them with the classical differentiable ISP, report.

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
from isplab.engine.metrics import psnr, ssim  # noqa: E402
from isplab.engine.report import Report  # noqa: E402
from isplab.engine.trainer import resolve_accelerator  # noqa: E402
from isplab.io.raw import read_raw  # noqa: E402
from isplab.isp import bayer  # noqa: E402
from isplab.isp.color import camera_to_srgb_matrix  # noqa: E402
from isplab.isp.levels import normalize_mosaic  # noqa: E402
from isplab.isp.pipeline import render  # noqa: E402
from isplab.isp.white_balance import gains_from_neutral  # noqa: E402


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


def awb_demo(out: Path, report: Report, *, captures: int = 160, seed: int = 0) -> None:
    """The AWB workflow on a synthetic Pi-like camera: captures -> convert -> train -> CV -> TFLite -> tuning."""
    from isplab.models.awb import save_awb_model
    from isplab.workflows.awb import synthetic
    from isplab.workflows.awb.convert import convert_folder
    from isplab.workflows.awb.dataset import load_dataset
    from isplab.workflows.awb.evaluate import cross_validate, evaluate_model, write_report
    from isplab.workflows.awb.export import export_awb
    from isplab.workflows.awb.train import TrainConfig, train_model
    from isplab.workflows.awb.tuning import generate_tuning, write_tuning

    out.mkdir(parents=True, exist_ok=True)
    tunings = synthetic.write_tuning_dir(out / "tunings")
    synthetic.write_captures(out / "dng", captures, seed=seed)
    summary = convert_folder(out / "dng", out / "dataset", "pisp", tuning_dir=tunings, workers=1, progress=False)
    dataset = load_dataset(out / "dataset", "pisp")
    config = TrainConfig(epochs=60, ensemble=1, seed=seed)  # a short run: the demo must stay a few minutes
    cv = cross_validate(dataset, 3, config, seed=seed)
    cv_report = write_report(cv, out / "cv", title="AWB demo: 3-fold grouped cross-validation (synthetic camera, pisp)")
    model = train_model(dataset, config, progress=False)
    save_awb_model(model, out / "model.pt")
    in_sample = evaluate_model(model, dataset)
    exported = export_awb(model, "pisp", out / "model.tflite", dataset=dataset, overwrite=True)
    tuning = write_tuning(generate_tuning(synthetic.SENSOR, "pisp", exported.path.resolve(), tuning_dir=tunings),
                          out / f"{synthetic.SENSOR}.json", overwrite=True)

    report.add_heading("Neural auto white balance (isplab awb) on a synthetic Pi-like camera")
    report.add_text(
        f"{captures} annotated DNGs of a simulated sensor ({summary}), converted to 32x32 PiSP statistics "
        f"with its libcamera tuning file, a '{config.arch}' network trained, scored by 3-fold cross-validation "
        f"with scenes kept in one fold (held out) and on its own training images, exported to TFLite with "
        f"libcamera's contract ({exported.size_bytes / 1024:.0f} KiB, max {exported.max_mired_difference:.3f} mired "
        f"from PyTorch over {exported.images_checked} images) and enabled in {tuning.name}. "
        f"The camera baseline is a grey-world estimate. Full reports: {cv_report.relative_to(report.out_dir)}."
    )
    report.add_table(
        [
            {"estimate": name, "mean": s.mean, "median": s.median, "p95": s.p95, "worst": s.worst}
            for name, s in (("model, held out (3-fold CV)", cv.model), ("model, in-sample", in_sample.model),
                            ("camera (grey world)", cv.camera))
        ],
        caption="AWB error (mireds)",
        float_format="{:.2f}",
    )
    report.add_image(cv_report.parent / "predicted_vs_true.png", caption="Held-out predictions vs truth")


def isp_demo(out: Path, report: Report, *, seed: int = 0, iters: int = 300, arch: str = "nafnet") -> None:
    """A short learned-ISP run on synthetic pairs: before/after images and test metrics."""
    from isplab.models.isp import build_isp_model, load_isp_model
    from isplab.workflows.isp.data import open_pairs, packed_to_rgb
    from isplab.workflows.isp.evaluate import predict, test_isp
    from isplab.workflows.isp.train import ISPTrainConfig, train_isp

    for split, count, split_seed in (("train", 24, seed), ("val", 4, seed + 1)):
        synthesize_dataset(out / "data" / split, count, seed=split_seed, size=(256, 192), overwrite=True, progress=False)
    config = ISPTrainConfig(arch=arch, num_maps_base=8, patch=128, batch_size=8, lr=1e-3, iters=iters,
                            eval_every=100, patches_per_epoch=200, val_max_images=4, seed=seed, device="cpu")
    torch.manual_seed(seed)
    untrained = build_isp_model(config.arch, config.num_maps_base).eval()
    train_isp(out / "data", out / "model", config, progress=False)
    model = load_isp_model(out / "model" / "model.pt")
    val = open_pairs(out / "data", "val")
    result = test_isp(model, val, out_dir=out / "test")

    report.add_heading("Learned ISP (isplab isp) trained on synthetic pairs")
    report.add_text(
        f"{arch} (base width {config.num_maps_base}) trained for {iters} iterations of {config.batch_size} "
        f"{config.patch}x{config.patch} raw patches on 24 synthetic DNG/sRGB pairs, tested on 4 held-out pairs. "
        "A real run trains for 100k iterations (isplab isp train); this one shows the machinery."
    )
    report.add_metrics({k: v for k, v in result.metrics().items() if v is not None}, caption="Held-out test")
    with torch.no_grad():
        for index in range(2):
            packed, target = val.load(index)
            panels = [
                ("raw (packed planes, linear)", packed_to_rgb(packed[None], "dng")[0].clamp(0, 1) ** (1 / 2.2)),
                ("before training", predict(untrained, packed[None])[0]),
                ("after training", predict(model, packed[None])[0]),
                ("target", target),
            ]
            figure, axes = plt.subplots(1, 4, figsize=(16, 3.4))
            for axis, (title, image) in zip(axes, panels):
                axis.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
                axis.set_title(title)
                axis.axis("off")
            figure.tight_layout()
            report.add_figure(figure, caption=f"{val.names[index]}: before and after training", name=f"isp_{index}")
            plt.close(figure)


def run_demo(out: Path, *, count: int = 6, size: tuple[int, int] = (512, 384), seed: int = 0, device: str = "auto") -> Path:
    """Run the demo into ``out`` and return the report's path."""
    out = Path(out)
    device = torch.device(resolve_accelerator(device))
    sensor = SensorSpec()
    dataset = synthesize_dataset(out / "data", count, seed=seed, size=size, sensor=sensor, overwrite=True)

    report = Report("isplab demo: synthetic raws through the classical differentiable ISP", out)
    report.add_text(
        f"{count} DNGs synthesised by unprocessing sRGB sources (Brooks et al. 2019) into "
        f"{dataset.out_dir}, then read back with rawpy and rendered by isplab.isp.render "
        "(black level, white balance, Malvar demosaic, colour matrix, sRGB gamma, tone curve). "
        "Round trip: the same sample without noise, unprocessed and rendered in memory. "
        "LibRaw agreement: isplab's rendering without tone curve or brightness gain against "
        "rawpy.postprocess of the same DNG."
    )
    rows, panels_per_sample = [], []
    for sample in dataset.samples:
        dng = dataset.out_dir / sample["file"]
        raw = read_raw(dng)
        mosaic = torch.from_numpy(raw.mosaic.astype(np.float32))[None, None].to(device)
        normalised = normalize_mosaic(mosaic, torch.tensor(raw.black_level, dtype=torch.float32, device=device),
                                      float(raw.white_level), raw.cfa_pattern)
        gains = gains_from_neutral(torch.tensor(raw.as_shot_neutral, dtype=torch.float32, device=device))[None]
        ccm = camera_to_srgb_matrix(torch.tensor(raw.color_matrix, dtype=torch.float32, device=device))[None]
        brightness = float(sample["brightness_gain"])  # not in the DNG: taken from the manifest
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
        panels_per_sample.append((figure, sample["file"]))

    report.add_heading("Per-sample metrics")
    report.add_table(rows)
    means = {key: float(np.mean([r[key] for r in rows])) for key in rows[0] if "PSNR" in key or "SSIM" in key}
    report.add_metrics({f"mean {k}": v for k, v in means.items()})
    figure, axis = plt.subplots(figsize=(8, 3.5))
    x = np.arange(len(rows))
    for offset, key in zip((-0.25, 0, 0.25), ("round trip PSNR (dB)", "render PSNR (dB)", "LibRaw agreement PSNR (dB)")):
        axis.bar(x + offset, [r[key] for r in rows], width=0.25, label=key)
    axis.set_xticks(x, [f"{r['file']}\n{r['source']}" for r in rows], fontsize=8)
    axis.set_ylabel("PSNR (dB)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    report.add_figure(figure, caption="PSNR per sample", name="psnr")
    plt.close(figure)
    report.add_heading("Samples")
    for figure, name in panels_per_sample:
        report.add_figure(figure, caption=name, name=Path(name).stem)
        plt.close(figure)
    if dataset.failures:
        report.add_heading("Failures")
        report.add_table(dataset.failures)
    awb_demo(out / "awb", report, seed=seed)
    isp_demo(out / "isp", report, seed=seed)
    return report.write()
