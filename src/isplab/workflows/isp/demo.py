"""Demo section ``isp``: a learned ISP trained on generated scenes, scored on held-out real photographs.

Training data are generated scenes only (:func:`~isplab.workflows.isp.data.training_set`: dead
leaves and procedural patterns, unprocessed with the training cameras); the test set is the
held-out set of real photographs (:func:`~isplab.workflows.isp.data.heldout_set`, held-out
cameras, noisy), scored with PSNR, SSIM and ΔE2000 next to the classical baselines on the same raws:
``oracle`` (the raw's own white balance and colour matrix) and ``greyworld`` (no metadata).

The section trains a small metadata-aware network with the classical prior
(:mod:`isplab.models.isp_prior`: it starts as the classical render and learns corrections) for
``iters`` iterations (the machinery, within the demo's budget), and also loads the small model that
ships with isplab (:data:`SHIPPED_MODEL`, trained with the benchmark's recipe for longer than the
demo can; :data:`SHIPPED_INFO` says how, with its held-out scores) and says so in the report.
Everything goes under ``out/isp/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from isplab.demo import stage  # noqa: E402
from isplab.engine.report import Report, plot_curves  # noqa: E402

NAME = "isp"
WEIGHTS = Path(__file__).parent / "weights"
#: the learned ISP shipped with isplab (metadata-aware NAFNet, width 8, classical prior) and how it was trained
SHIPPED_MODEL = WEIGHTS / "nafnet8_metadata.pt"
SHIPPED_INFO = WEIGHTS / "nafnet8_metadata.json"
#: baselines shown beside the models (LibRaw is in `isplab isp test` and the benchmark)
DEMO_BASELINES = ("oracle", "greyworld")


def section(out: Path, report: Report, *, seed: int, device: str, iters: int = 200, arch: str = "nafnet", patch: int = 96,
            train_pairs: int = 24, val_pairs: int = 4, heldout_pairs: int = 8, size: tuple[int, int] = (256, 192),
            heldout_size: tuple[int, int] = (384, 288), shipped: bool = True) -> None:
    """Train ``arch`` for ``iters`` iterations on ``train_pairs`` generated scenes and score it, and the
    shipped model (when ``shipped``), on ``heldout_pairs`` held-out real-photo raws beside the baselines."""
    from isplab.io.raw import read_raw
    from isplab.models.isp import build_isp_model, load_isp_model
    from isplab.workflows.isp.data import heldout_set, open_pairs, packed_to_rgb, training_set
    from isplab.workflows.isp.evaluate import baseline_render, predict, test_isp
    from isplab.workflows.isp.infer import source_for
    from isplab.workflows.isp.train import ISPTrainConfig, train_isp

    folder = Path(out) / NAME
    stage(f"generating {train_pairs} training and {val_pairs} validation scenes, {heldout_pairs} held-out photo raws")
    training_set(folder / "data" / "train", train_pairs, seed=seed, size=size, overwrite=True)
    training_set(folder / "data" / "val", val_pairs, seed=seed + 1, size=size, camera_split="val", overwrite=True)
    heldout = heldout_set(folder / "heldout", heldout_pairs, size=heldout_size, overwrite=True)

    config = ISPTrainConfig(arch=arch, num_maps_base=8, patch=patch, batch_size=8, lr=1e-3, iters=iters,
                            eval_every=max(1, iters // 4), patches_per_epoch=200, val_max_images=val_pairs, seed=seed,
                            device=device, metadata=True, prior="classical")
    stage(f"training {arch} (metadata-aware, classical prior) for {iters} iterations of {config.batch_size} {patch}x{patch} patches")
    train_isp(folder / "data", folder / "model", config, progress=False, overwrite=True)
    trained = load_isp_model(folder / "model" / "model.pt")
    models = {f"trained here ({iters} iterations)": trained}
    info = None
    if shipped:
        models["shipped model"] = load_isp_model(SHIPPED_MODEL)
        info = json.loads(SHIPPED_INFO.read_text())

    stage(f"scoring on the {heldout_pairs} held-out raws with the {' and '.join(DEMO_BASELINES)} baselines")
    results = {}
    for i, (name, model) in enumerate(models.items()):
        source = source_for(model, open_pairs(heldout, "test"))
        results[name] = test_isp(model, source, out_dir=folder / f"test_{i}", overwrite=True,
                                 baselines=DEMO_BASELINES if i == len(models) - 1 else ())
    last = results[list(models)[-1]]
    rows = [{"method": name, **{k: v for k, v in r.comparison()[0].items() if k != "method"}} for name, r in results.items()]
    rows += [{"method": f"{name} (classical)", **scores} for name, scores in last.baselines.items()]

    report.add_heading("Learned ISP (isplab isp): generated scenes for training, real photographs for testing")
    text = (
        f"Training: {train_pairs} generated scenes (dead leaves, procedural) unprocessed with the training cameras. "
        f"Test: {heldout_pairs} crops of real photographs (scikit-image, scikit-learn) unprocessed with held-out "
        "cameras, which no model saw. Both models are metadata-aware: the raw's as-shot white balance, colour "
        "matrix and exposure (DNG BaselineExposure) are applied before the network, and both have the classical "
        "prior: the output is a classical render of that input plus the network's correction, so an untrained "
        "model renders like the classical pipeline and training learns denoising and detail. "
        f"'trained here' is {arch} (width {config.num_maps_base}) after {iters} iterations of {config.batch_size} "
        f"{patch}x{patch} patches: the machinery, within the demo's budget."
    )
    if info is not None:
        text += (f" 'shipped model' is loaded from {SHIPPED_MODEL.name}, which isplab ships because the demo's budget "
                 f"is too short to train it on a CPU; it was trained with: {info['command']} "
                 f"({info['iterations']} iterations, {info.get('training_minutes', '?')} CPU minutes, {info['data']}, "
                 f"seed {info['seed']}).")
    report.add_text(text)
    report.add_table(rows, caption="Held-out real-photo raws: PSNR (dB, per-image mean), SSIM, ΔE2000 (lower is better)")
    for i, name in enumerate(models):
        if results[name].report is not None:
            report.add_link(results[name].report, f"test report of the {name}", before="Per-image results: ", after=".")
    for keys, title, file in ((["train_loss"], "training loss (20 MSE + 20 (1 - SSIM))", "curve_loss"),
                              (["val_psnr"], "validation PSNR (dB)", "curve_psnr")):
        figure = plot_curves(folder / "model", keys, x="step", title=f"trained here: {title}")
        figure.savefig(folder / f"{file}.png", dpi=100)
        plt.close(figure)
        report.add_image(folder / f"{file}.png", caption=f"{title}, from the run's metrics.csv")

    source = open_pairs(heldout, "test")
    torch.manual_seed(seed)
    untrained = build_isp_model(arch, config.num_maps_base, metadata=True, prior="classical").eval()
    with torch.no_grad():
        for index in range(min(2, len(source))):
            packed, target = source.load(index)
            gain = read_raw(source.raws[index]).exposure_gain  # the DNG's BaselineExposure
            panels = [("raw (packed planes, linear)", (packed_to_rgb(packed[None], "dng")[0] * gain).clamp(0, 1) ** (1 / 2.2)),
                      ("grey-world (classical)", baseline_render("greyworld", source.raws[index], gain))]
            prepared = source_for(trained, source).load(index)[0][None]
            panels.append(("untrained (the classical prior)", predict(untrained, prepared)[0]))
            panels += [(name, predict(model, source_for(model, source).load(index)[0][None])[0]) for name, model in models.items()]
            panels += [("oracle (classical)", baseline_render("oracle", source.raws[index], gain)), ("target", target)]
            figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0))
            for axis, (title, image) in zip(axes, panels):
                axis.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
                axis.set_title(title, fontsize=9)
                axis.axis("off")
            figure.tight_layout()
            figure.savefig(folder / f"heldout_{index}.png", dpi=100)
            plt.close(figure)
            report.add_image(folder / f"heldout_{index}.png", caption=f"held-out {source.names[index]}: the models beside "
                             "the classical pipeline without (grey-world) and with (oracle) the raw's metadata")
