"""Demo section ``genisp``: a tiny synthetic low-light dataset, a small detector, GenISP trained
through it (frozen), and AP for the four inputs (packed raw, classical ISP, GenISP, normal light).

Everything goes under ``out/genisp/``: the dataset (``isplab genisp synth``), the detector run,
the GenISP run and the test report (``metrics.json``, ``table.txt``, ``images/``). The budget is
tiny (it shows the machinery, not the method's accuracy; ``benchmarks/genisp.py`` measures that).
"""

from __future__ import annotations

from pathlib import Path

from isplab.demo import stage
from isplab.engine.report import Report, plot_curves

NAME = "genisp"


def section(out: Path, report: Report, *, seed: int, device: str, images: int = 32, size: tuple[int, int] = (128, 96),
            detector_epochs: int = 4, genisp_epochs: int = 2, batch_size: int = 8) -> None:
    """Synthesise ``images`` scenes of ``size``, train the small detector for ``detector_epochs`` and
    GenISP for ``genisp_epochs`` on cam-a, then test the four inputs on cam-a's test split."""
    from isplab.engine.trainer import resolve_accelerator
    from isplab.models.genisp import load_genisp
    from isplab.workflows.genisp.detector import load_detector
    from isplab.workflows.genisp.evaluate import SOURCE_TITLES, SOURCES, evaluate_inputs
    from isplab.workflows.genisp.synth import synthesize
    from isplab.workflows.genisp.train import (
        DetectorTrainConfig,
        GenISPTrainConfig,
        open_split,
        train_detector,
        train_genisp,
    )

    folder = Path(out) / NAME
    short, long = sorted((size[1] // 2, size[0] // 2))  # the packed raw's size: no resizing
    stage(f"synthesising {images} low-light scenes ({size[0]}x{size[1]}, cameras cam-a and cam-b)")
    synthesize(folder / "data", count=images, seed=seed, size=size, workers=1, overwrite=True)
    dconfig = DetectorTrainConfig(short=short, long=long, batch_size=batch_size, epochs=detector_epochs, seed=seed, device=device)
    stage(f"training the small detector ({dconfig.detector}) for {detector_epochs} epochs on the normal-light renders")
    detector_path = train_detector(folder / "data", folder / "detector", dconfig, overwrite=True, progress=False)
    milestones = [max(1, round(genisp_epochs / 3)), max(2, round(2 * genisp_epochs / 3))]
    gconfig = GenISPTrainConfig(camera="cam-a", batch_size=batch_size, epochs=genisp_epochs, milestones=milestones, seed=seed, device=device)
    stage(f"training GenISP for {genisp_epochs} epochs on cam-a through the frozen detector")
    model_path = train_genisp(folder / "data", folder / "model", detector_path, gconfig, overwrite=True, progress=False)
    stage("testing the frozen detector on packed raw, classical ISP, GenISP and normal-light images")
    accelerator = resolve_accelerator(device)
    coco = open_split(folder / "data", "cam-a", "test")
    result = evaluate_inputs(coco, load_genisp(model_path), load_detector(detector_path), folder / "test", sources=SOURCES,
                             normal_coco=open_split(folder / "data", "normal", "test"), short=short, long=long,
                             device="cuda" if accelerator == "cuda" else accelerator, keep=2, overwrite=True)

    report.add_heading("GenISP (isplab genisp): a neural ISP trained through a frozen detector")
    train_images = len(open_split(folder / "data", "cam-a", "train"))
    report.add_text(
        f"{images} synthetic scenes (persons, bicycles, cars on varied backgrounds) rendered at normal light and as dark, noisy "
        f"raws of two cameras. A small RetinaNet (ResNet-18 FPN, random init) trained for {detector_epochs} epochs on "
        f"{train_images} normal-light renders, frozen; GenISP trained for {genisp_epochs} epochs on cam-a's raws through it "
        f"(Adam 1e-2, x0.1 at epochs {milestones[0]} and {milestones[1]}). Tested on {len(coco)} held-out cam-a scenes at "
        f"{long}x{short}. A tiny budget: it shows the machinery; benchmarks/genisp.py measures the method."
    )
    report.add_table(
        [{"input": SOURCE_TITLES[s], "AP": 100 * m["AP"], "AP50": 100 * m["AP50"], "AP75": 100 * m["AP75"]} for s, m in result.metrics.items()],
        caption="COCO AP (%) of the same frozen detector", float_format="{:.1f}",
    )
    report.add_link(result.folder / "metrics.json", "per-class AP", before="Details: ", after=".")
    figure = plot_curves(folder / "model", ["train_loss", "val_ap"], x="step", title="GenISP training loss and validation AP")
    report.add_figure(figure, "from the GenISP run's metrics.csv", name="genisp_curves")
    for source in ("genisp", "classical"):
        drawn = sorted((result.folder / "images").glob(f"{source}_*.png"))
        if drawn:
            report.add_image(drawn[0], caption=f"{SOURCE_TITLES[source]}: ground truth (green), detections (red)",
                             name=f"genisp_{source}_{drawn[0].stem}")
