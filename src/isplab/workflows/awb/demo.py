"""Demo section ``awb``: the neural AWB workflow on a synthetic Pi-like camera.

Captures -> PiSP statistics -> grouped cross-validation -> final model (training curve) -> TFLite
export checked against PyTorch -> libcamera tuning file, all under ``out/awb/``.
"""

from __future__ import annotations

from pathlib import Path

from isplab.demo import stage
from isplab.engine.report import Report, plot_curves

NAME = "awb"


def section(out: Path, report: Report, *, seed: int, device: str, captures: int = 160, epochs: int = 60,
            folds: int = 3) -> None:
    """Run the AWB workflow small: ``captures`` synthetic DNGs, ``folds``-fold CV, ``epochs`` per model."""
    from isplab.models.awb import save_awb_model
    from isplab.workflows.awb import synthetic
    from isplab.workflows.awb.convert import convert_folder
    from isplab.workflows.awb.dataset import load_dataset
    from isplab.workflows.awb.evaluate import cross_validate, evaluate_model, write_report
    from isplab.workflows.awb.export import export_awb
    from isplab.workflows.awb.train import TrainConfig, train_model
    from isplab.workflows.awb.tuning import generate_tuning, write_tuning

    folder = Path(out) / NAME
    folder.mkdir(parents=True, exist_ok=True)
    stage(f"writing {captures} annotated DNGs of a simulated Pi camera")
    tunings = synthetic.write_tuning_dir(folder / "tunings")
    synthetic.write_captures(folder / "dng", captures, seed=seed)
    stage("converting them to 32x32 PiSP statistics with the camera's tuning file")
    summary = convert_folder(folder / "dng", folder / "dataset", "pisp", tuning_dir=tunings, workers=1, progress=False,
                             overwrite=True)
    dataset = load_dataset(folder / "dataset", "pisp")
    config = TrainConfig(epochs=epochs, ensemble=1, seed=seed, device=device)  # short: the demo takes minutes
    stage(f"{folds}-fold grouped cross-validation, {epochs} epochs per fold")
    cv = cross_validate(dataset, folds, config, seed=seed)
    cv_report = write_report(cv, folder / "cv", title=f"AWB demo: {folds}-fold grouped cross-validation (synthetic camera, pisp)")
    stage(f"training the final model on all {len(dataset)} images")
    model = train_model(dataset, config, run_dir=folder / "train", progress=False)
    save_awb_model(model, folder / "model.pt")
    in_sample = evaluate_model(model, dataset)
    stage("exporting to TFLite (libcamera's contract) and checking it against PyTorch")
    exported = export_awb(model, "pisp", folder / "model.tflite", dataset=dataset, overwrite=True)
    tuning = write_tuning(generate_tuning(synthetic.SENSOR, "pisp", exported.path.resolve(), tuning_dir=tunings),
                          folder / f"{synthetic.SENSOR}.json", overwrite=True)

    report.add_heading("Neural auto white balance (isplab awb) on a synthetic Pi-like camera")
    report.add_text(
        f"{captures} annotated DNGs of a simulated sensor ({summary}), converted to 32x32 PiSP statistics "
        f"with its libcamera tuning file, a '{config.arch}' network trained for {epochs} epochs, scored by "
        f"{folds}-fold cross-validation with scenes kept in one fold (held out) and on its own training images, "
        f"exported to TFLite with libcamera's contract ({exported.size_bytes / 1024:.0f} KiB, max "
        f"{exported.max_mired_difference:.3f} mired from PyTorch over {exported.images_checked} images) and "
        f"enabled in {tuning.relative_to(report.out_dir)}. The camera baseline is a grey-world estimate."
    )
    report.add_link(cv_report, "cross-validation report", before="Per-image errors, worst images and plots: ", after=".")
    report.add_table(
        [
            {"estimate": name, "mean": s.mean, "median": s.median, "p95": s.p95, "worst": s.worst}
            for name, s in ((f"model, held out ({folds}-fold CV)", cv.model), ("model, in-sample", in_sample.model),
                            ("camera (grey world)", cv.camera))
        ],
        caption="AWB error (mireds)",
        float_format="{:.2f}",
    )
    report.add_image(cv_report.parent / "predicted_vs_true.png", caption="Held-out predictions vs truth")
    figure = plot_curves(folder / "train", ["train_loss"], x="epoch", logy=True,
                         title="Final model: training loss (weighted mean mired error)")
    figure.savefig(folder / "train_curve.png", dpi=110)
    report.add_image(folder / "train_curve.png", caption="Training curve (logs/csv/version_0/metrics.csv)")
