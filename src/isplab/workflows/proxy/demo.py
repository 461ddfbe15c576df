"""Demo section ``proxy``: a small proxy of darktable's exposure block, trained briefly.

Generates an exposure dataset with darktable-cli when it is installed and with isplab's builtin
ops otherwise (the section says which), trains a small proxy for a few hundred iterations, links
its report (held-out scores, worst samples, the input / darktable / proxy / error grid), regresses
the exposure of one held-out sample and renders it back, and sweeps the exposure slider (MP4,
GIF and frames) — all under ``out/proxy/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from isplab.demo import stage
from isplab.engine.report import Report

NAME = "proxy"


def section(out: Path, report: Report, *, seed: int, device: str, iters: int = 300, count: int = 48, images: int = 6,
            size: tuple[int, int] = (128, 96), steps: int = 12, search_renders: int = 20) -> None:
    """Generate, train, regress and sweep an exposure proxy (see the module docstring)."""
    from isplab.workflows.proxy.generate import GenerateOptions, generate
    from isplab.workflows.proxy.regress import RegressOptions, regress
    from isplab.workflows.proxy.sweep import SweepOptions, sweep
    from isplab.workflows.proxy.train import ProxyTrainConfig, make_splits, train_proxy

    folder = Path(out) / NAME
    backend = "darktable" if shutil.which("darktable-cli") else "builtin"
    renderer = "darktable-cli" if backend == "darktable" else "isplab's builtin ops (darktable-cli is not installed)"
    stage(f"rendering {count} exposure samples of {images} synthetic DNGs with {renderer}")
    generate(GenerateOptions(block="exposure", output=folder / "data", count=count, synth_images=images, backend=backend,
                             size=size, seed=seed, overwrite=True, progress=False, params=["exposure=-2:2"]))  # fmt: skip
    config = ProxyTrainConfig(width=8, depth=3, patch=min(64, *size), batch_size=8, lr=2e-3, iters=iters, eval_every=max(1, iters // 4),
                              patches_per_epoch=160, seed=seed, device=device)  # fmt: skip
    stage(f"training a width-8 proxy for {iters} iterations")
    model_path = train_proxy("exposure", folder / "data", folder / "model", config, overwrite=True, progress=False)
    from isplab.workflows.proxy.dataset import load_dataset

    data = load_dataset(folder / "data")
    splits = make_splits(data, ["exposure"], config.holdout_params)
    sample = (splits.val_images or splits.val_params)[0]["id"]
    stage(f"regressing the exposure of held-out sample {sample} and rendering it back")
    result = regress(RegressOptions(block="exposure", model=model_path, sample=sample, search_renders=search_renders,
                                    output=folder / "regress", overwrite=True, seed=seed))  # fmt: skip
    stage(f"sweeping the exposure slider over {steps} frames")
    swept = sweep(SweepOptions(block="exposure", param="exposure", model=model_path, output=folder / "sweep", sample=sample,
                               steps=steps, fps=6, overwrite=True))  # fmt: skip

    report.add_heading("Neural proxy of darktable's exposure block (isplab proxy)")
    report.add_text(
        f"Rendered with {renderer}: {count} samples (exposure -2..+2 EV) of {images} synthetic {size[0]}x{size[1]} DNGs, "
        f"split by image. A width-8 U-Net trained for {iters} iterations; a real proxy trains far longer "
        "(isplab proxy train, benchmarks/proxy.py --fidelity)."
    )
    report.add_link(folder / "model" / "report.html", "training report", before="Held-out scores, worst samples and the grid: ", after=".")
    report.add_image(folder / "model" / "report_grid.png", "input / darktable / proxy / |error| x 10", name="proxy_grid")
    rows = [{"parameter": "exposure (EV)", "truth": result.truth["exposure"], "proxy regression": result.recovered["exposure"],
             "Nelder-Mead on the renderer": result.search["recovered"]["exposure"] if result.search else None}]  # fmt: skip
    report.add_table(rows, caption="Slider regression of one held-out sample")
    report.add_metrics({
        "render-back PSNR (dB)": result.render_back_psnr,
        "proxy regression time (s)": result.proxy_seconds,
        "Nelder-Mead renders": result.search["renders"] if result.search else None,
        "Nelder-Mead time (s)": result.search["seconds"] if result.search else None,
    }, caption="Render-back check")  # fmt: skip
    report.add_image(swept.gif, "exposure sweep: proxy (left) beside the renderer (right)", name="proxy_sweep")
    report.add_link(swept.mp4, "sweep.mp4", before="The same sweep as video: ", after=f"; frames in {folder / 'sweep' / 'frames'}.")
