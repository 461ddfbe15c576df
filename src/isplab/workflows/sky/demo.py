"""Demo section ``sky``: synthetic HDR panoramas, a short U-Net training, held-out numbers, overlays.

Everything goes under ``out/sky/``: the dataset (``isplab sky synth``), the run folder, the test
report of the held-out images (with and without the guided-filter refinement) and the overlays.
"""

from __future__ import annotations

from pathlib import Path

from isplab.demo import stage
from isplab.engine.report import Report, plot_curves

NAME = "sky"


def section(out: Path, report: Report, *, seed: int, device: str, images: int = 8, size: tuple[int, int] = (256, 128),
            epochs: int = 4, encoder: str = "resnet18", depth: int = 3) -> None:
    """Synthesise ``images`` panoramas, train ``encoder`` for ``epochs`` short epochs, test the held-out images."""
    from isplab.engine.trainer import resolve_accelerator
    from isplab.workflows.sky.data import open_dataset, split_by_image
    from isplab.workflows.sky.evaluate import evaluate
    from isplab.workflows.sky.model import load_sky_model
    from isplab.workflows.sky.predict import RefineOptions, TileOptions
    from isplab.workflows.sky.synth import synthesize
    from isplab.workflows.sky.train import SkyTrainConfig, train_sky

    folder = Path(out) / NAME
    stage(f"synthesising {images} HDR sky panoramas ({size[0]}x{size[1]}) with COCO polygons")
    synthesize(folder / "data", images, size=size, seed=seed, overwrite=True)
    config = SkyTrainConfig(encoder=encoder, encoder_depth=depth, decoder_channels=[16] * depth, patch=64, batch_size=8,
                            epochs=epochs, patches_per_epoch=64, seed=seed, device=device)
    stage(f"training a U-Net ({encoder}, {depth} stages) for {epochs} epochs of {config.patches_per_epoch} patches")
    model_path = train_sky(folder / "data", folder / "model", config, overwrite=True, progress=False)
    _, val = split_by_image(open_dataset(folder / "data"), config.val_fraction, config.seed)
    model = load_sky_model(model_path)
    stage(f"testing on the {len(val)} held-out panoramas")
    accelerator = resolve_accelerator(device)
    plain = evaluate(model, val, folder / "test", TileOptions(tile=128, overlap=96, margin=32), device=accelerator, overwrite=True)
    refined = evaluate(model, val, folder / "test-refined", TileOptions(tile=128, overlap=96, margin=32), device=accelerator,
                       overwrite=True, refine=RefineOptions())

    report.add_heading("Sky segmentation (isplab sky) on synthetic HDR panoramas")
    report.add_text(
        f"A {encoder} U-Net ({depth} stages) trained for {epochs} epochs of {config.patches_per_epoch} random 64x64 patches "
        f"(log-encoded HDR, exposure and gamma augmentation) on {images - len(val)} synthetic panoramas, tested on "
        f"{len(val)} held-out ones (split by image), predicted in overlapping 128-pixel tiles. A tiny budget: it shows the machinery."
    )
    report.add_table(
        [{"": "as predicted", "IoU": plain.iou, "boundary F (2 px)": plain.boundary_f},
         {"": "guided-filter refined", "IoU": refined.iou, "boundary F (2 px)": refined.boundary_f}],
        caption="Held-out images", float_format="{:.4f}",
    )
    report.add_link(plain.folder / "per_image.csv", "per-image table", before="Details: ", after=".")
    figure = plot_curves(folder / "model", ["train_loss", "val_iou"], x="step", title="training loss and validation IoU")
    report.add_figure(figure, "from the run's metrics.csv", name="sky_curves")
    for row in plain.rows[:2]:
        report.add_image(plain.folder / "overlays" / f"{row['image']}.png", caption=f"{row['image']}: predicted sky (tint) and boundary (red)",
                         name=f"sky_overlay_{row['image']}")
