"""Demo section ``isp``: a short learned-ISP run on synthetic DNG/sRGB pairs.

Synthesises train/val pairs, trains a small network for a few hundred iterations, tests it on the
held-out pairs (the test command's own report), and shows the curves from the run's
``metrics.csv`` and before/after images — all under ``out/isp/``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from isplab.demo import stage  # noqa: E402
from isplab.engine.report import Report, plot_curves  # noqa: E402

NAME = "isp"


def section(out: Path, report: Report, *, seed: int, device: str, iters: int = 200, arch: str = "nafnet", patch: int = 96,
            train_pairs: int = 24, val_pairs: int = 4) -> None:
    """Train ``arch`` for ``iters`` iterations on ``train_pairs`` synthetic pairs, test on ``val_pairs``."""
    from isplab.data.synth import synthesize_dataset
    from isplab.models.isp import build_isp_model, load_isp_model
    from isplab.workflows.isp.data import open_pairs, packed_to_rgb
    from isplab.workflows.isp.evaluate import predict, test_isp
    from isplab.workflows.isp.train import ISPTrainConfig, train_isp

    folder = Path(out) / NAME
    stage(f"synthesising {train_pairs} training and {val_pairs} validation DNG/sRGB pairs")
    for split, count, split_seed in (("train", train_pairs, seed), ("val", val_pairs, seed + 1)):
        synthesize_dataset(folder / "data" / split, count, seed=split_seed, size=(256, 192), overwrite=True,
                           progress=False)
    eval_every = max(1, iters // 4)
    config = ISPTrainConfig(arch=arch, num_maps_base=8, patch=patch, batch_size=8, lr=1e-3, iters=iters,
                            eval_every=eval_every, patches_per_epoch=200, val_max_images=val_pairs, seed=seed,
                            device=device)
    torch.manual_seed(seed)
    untrained = build_isp_model(config.arch, config.num_maps_base).eval()
    stage(f"training {arch} for {iters} iterations of {config.batch_size} {config.patch}x{config.patch} patches")
    train_isp(folder / "data", folder / "model", config, progress=False)
    model = load_isp_model(folder / "model" / "model.pt")
    stage(f"testing on the {val_pairs} held-out pairs")
    val = open_pairs(folder / "data", "val")
    result = test_isp(model, val, out_dir=folder / "test")

    report.add_heading("Learned ISP (isplab isp) trained on synthetic pairs")
    report.add_text(
        f"{arch} (base width {config.num_maps_base}) trained for {iters} iterations of {config.batch_size} "
        f"{config.patch}x{config.patch} raw patches on {train_pairs} synthetic DNG/sRGB pairs, tested on "
        f"{val_pairs} held-out pairs. A real run trains for 100k iterations (isplab isp train); this one shows "
        "the machinery."
    )
    if result.report is not None:
        report.add_link(result.report, "test report", before="Per-image results: ", after=".")
    report.add_metrics({k: v for k, v in result.metrics().items() if v is not None}, caption="Held-out test")
    for keys, title, name in ((["train_loss"], "training loss (20 MSE + 20 (1 - SSIM))", "curve_loss"),
                              (["val_psnr"], "validation PSNR (dB)", "curve_psnr")):
        figure = plot_curves(folder / "model", keys, x="step", title=title)
        figure.savefig(folder / f"{name}.png", dpi=100)
        report.add_image(folder / f"{name}.png", caption=f"{title}, from the run's metrics.csv")
    with torch.no_grad():
        for index in range(min(2, len(val))):
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
            figure.savefig(folder / f"before_after_{index}.png", dpi=100)
            plt.close(figure)
            report.add_image(folder / f"before_after_{index}.png", caption=f"{val.names[index]}: before and after training")
