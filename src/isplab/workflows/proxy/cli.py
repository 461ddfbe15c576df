"""``isplab proxy ...``: neural proxies of darktable's processing blocks (``docs/proxy.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from isplab.cli_options import Device, Devices, NumNodes, Overwrite, Progress, Resume, Seed, Strategy, Workers, exit_interrupted, trainer_options

app = typer.Typer(help="Neural proxies of darktable's processing blocks: datasets (generate, pack), training (train), scores (test), slider regression (regress), sweeps (sweep), chains (pipeline).", no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)


def _default_heads() -> str:
    from isplab.workflows.proxy.blocks import BLOCKS

    special = [f"{b.name}: {b.default_head}" for b in BLOCKS.values() if b.default_head != "affine"]
    return ", ".join([*special, "others: affine"])


@app.command("generate")
def generate_command(
    block: Annotated[str, typer.Argument(help="Block: exposure, temperature, colorbalancergb, sharpen, hazeremoval, lowpass or denoiseprofile (darktable only).", show_default=False)],
    output_dir: Annotated[Path, typer.Argument(metavar="OUTPUT_DIR", help="Dataset folder (dataset.json, inputs/, outputs/, manifest).", show_default=False)],
    count: Annotated[int, typer.Option("-n", "--count", help="Samples: Latin-hypercube parameter vectors, image i mod M each.")] = 64,
    param: Annotated[
        list[str] | None,
        typer.Option("-p", "--param", help="Parameters to vary: NAME, NAME=LO:HI or NAME=VALUE (fixed); comma-separated or repeated. Default: all over their sampling ranges (darktable's soft ranges; sharpen's threshold 0-10, see docs/proxy.md); unnamed ones stay at default.", show_default=False),
    ] = None,
    images: Annotated[Path | None, typer.Option("--images", help="Folder of .dng raws (default: synthetic DNGs from isplab's data synth).", show_default=False)] = None,
    backend: Annotated[str, typer.Option("--backend", help="darktable (darktable-cli 4.2) or builtin (isplab's own ops).")] = "darktable",
    workers: Workers = None,
    shard: Annotated[str | None, typer.Option("--shard", help="I/N: render only samples with index mod N = I-1 (cluster array jobs; 1 <= I <= N).", show_default=False)] = None,
    size: Annotated[str | None, typer.Option("--size", help="WIDTHxHEIGHT: synthetic DNG size (default 512x384), or the largest render size for --images (default: full size).", show_default=False)] = None,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    progress: Progress = True,
    synth_images: Annotated[int, typer.Option("--synth-images", help="Synthetic DNGs (at most -n) when --images is not given.")] = 8,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of the images held out for validation (split by image).")] = 0.25,
    darktable_cli: Annotated[str | None, typer.Option("--darktable-cli", help="darktable-cli to run (default: the one on PATH).", show_default=False)] = None,
) -> None:
    """Render (input, output, params) triples of one darktable block for training a proxy.

    Re-running the same command completes a partial dataset (finished samples are skipped); a different command into a non-empty folder is refused without --overwrite.

    Failed renders are reported with darktable's message, skipped, and make the command exit 1.
    """
    from isplab.data.synth import parse_size
    from isplab.workflows.proxy.generate import GenerateOptions, generate, parse_shard

    opts = GenerateOptions(
        block=block,
        output=output_dir,
        count=count,
        params=param,
        images=images,
        backend=backend,
        workers=workers,
        shard=parse_shard(shard),
        size=parse_size(size) if size else None,
        seed=seed,
        overwrite=overwrite,
        progress=progress,
        synth_images=synth_images,
        val_fraction=val_fraction,
        darktable_cli=darktable_cli,
    )
    result = generate(opts)
    engine = f"darktable {result.darktable_version}" if result.darktable_version else "isplab builtin ops"
    console.print(
        f"{block}: rendered {len(result.rendered)} samples with {engine}, {result.skipped} already done, "
        f"{len(result.failures)} failed; manifest {result.manifest}",
        highlight=False,
    )
    for failure in result.failures:
        console.print(f"[red]failed[/] sample {failure['id']} ({failure['image']}): {escape(failure['error'])}", highlight=False)
    if result.failures:
        raise typer.Exit(1)


Model = Annotated[Path, typer.Option("--model", "-m", help="Trained proxy (model.pt from isplab proxy train).", show_default=False)]


@app.command("train")
def train_command(
    block: Annotated[str, typer.Argument(help="The block the dataset holds (exposure, temperature, ...).", show_default=False)],
    dataset: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset folder of isplab proxy generate.", show_default=False)],
    model_dir: Annotated[Path, typer.Argument(metavar="MODEL_DIR", help="Run folder: model.pt, config.json, log.txt, checkpoints/, logs/, report.html.", show_default=False)],
    param: Annotated[list[str] | None, typer.Option("-p", "--param", help="The parameters the proxy takes (comma-separated or repeated); must be the dataset's varied ones. Default: those.", show_default=False)] = None,
    width: Annotated[int, typer.Option("--width", help="U-Net width: encoder channels width, 2 width, ... 2^depth width.")] = 32,
    depth: Annotated[int, typer.Option("--depth", help="Down-sampling steps of the U-Net.")] = 4,
    head: Annotated[str | None, typer.Option("--head", show_default=False, help=f"Default: the block's ({_default_heads()}; see docs/proxy.md). How the U-Net acts on the input: affine (out = x exp(g) + b, per pixel), add (out = x + y, the seed's), matrix (a 3x3 colour matrix + offset per pixel), global (a colour transform from the parameters alone, then matrix) pointwise (a colour map of each pixel's colour and the parameters, the same for every image, then matrix) or blur (a Gaussian blur in CIE Lab whose radius the parameters set, then a per-pixel colour map in CIE Lab, then matrix; it trains on whole images, --patch 0) or unsharp (darktable's sharpen: an unsharp mask of CIE Lab L whose sigma, amount and threshold the parameters set, then matrix; whole images, --patch 0).")] = None,
    iters: Annotated[int, typer.Option("--iters", help="Training iterations (the total, also when resuming).")] = 20_000,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Budget in epochs instead of --iters: epochs x (patches-per-epoch // batch-size) iterations.", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Patches per step and per device.")] = 8,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-4,
    schedule: Annotated[str, typer.Option("--schedule", help="Learning rate: constant, or cosine (annealed to 0 over the iterations).")] = "constant",
    patch: Annotated[int | None, typer.Option("--patch", show_default=False, help="Square crop side in pixels; 0: whole images. Default: 128, or 0 for the blur head.")] = None,
    global_weight: Annotated[float, typer.Option("--global-weight", help="--head global, pointwise or blur: weight of the loss of the part before the U-Net alone (0: only the whole proxy's loss).")] = 1.0,
    pixel_steps: Annotated[int | None, typer.Option("--pixel-steps", show_default=False, help="--head pointwise, blur or unsharp: steps fitting its pixel MLP (and the blur head's sigma MLP) alone on random pixels of the training samples (unsharp: its parameter MLP on whole images) before the U-Net's training (0: none). Default: 1500 for pointwise, 5000 for blur, 2000 for unsharp.")] = None,
    cfa_phase: Annotated[bool | None, typer.Option("--cfa-phase/--no-cfa-phase", show_default=False, help="A colour-filter-phase dependent 3x3 filter of the input and the pixels' row/column parity as U-Net inputs, for blocks that act on the raw mosaic before demosaicking (crops then start at even offsets, unflipped). Default: on for those blocks (temperature), off for the others.")] = None,
    patches_per_epoch: Annotated[int, typer.Option("--patches-per-epoch", help="Random crops per epoch (re-drawn each epoch).")] = 2000,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Validate and checkpoint every this many iterations.")] = 1000,
    loss: Annotated[str | None, typer.Option("--loss", help="l1, mse or l1+grad (default: l1+grad for sharpen, mse for denoiseprofile, l1 otherwise).", show_default=False)] = None,
    holdout_params: Annotated[float, typer.Option("--holdout-params", help="Share of samples held out by parameter value (a central band of each parameter's range).")] = 0.1,
    workers: Annotated[int, typer.Option("--workers", help="Dataloader worker processes per device.")] = 0,
    resume: Resume = False,
    overwrite: Overwrite = False,
    seed: Seed = 0,
    device: Device = "auto",
    devices: Devices = "auto",
    strategy: Strategy = "auto",
    num_nodes: NumNodes = 1,
    progress: Progress = True,
) -> None:
    """Train a proxy (the seed's U-Net) of one block; writes the run folder and report.html."""
    from isplab.workflows.proxy.train import ProxyTrainConfig, train_proxy
    from isplab.engine import TrainingInterrupted

    options = trainer_options(device, devices, strategy, num_nodes)
    if epochs is not None:
        iters = max(1, epochs * (patches_per_epoch // max(1, batch_size)))
    config = ProxyTrainConfig(
        params=param, width=width, depth=depth, head=head, patch=patch, batch_size=batch_size, lr=lr, iters=iters,
        schedule=schedule, global_weight=global_weight, pixel_steps=pixel_steps, cfa_phase=cfa_phase, eval_every=eval_every, patches_per_epoch=patches_per_epoch, loss=loss, holdout_params=holdout_params,
        seed=seed, workers=workers, **options.as_kwargs(),
    )  # fmt: skip
    try:
        path = train_proxy(block, dataset, model_dir, config, resume=resume, overwrite=overwrite, progress=progress)
    except TrainingInterrupted as stop:
        exit_interrupted(stop)
    console.print(f"model: {path}; report: {model_dir / 'report.html'}", highlight=False)


@app.command("pack")
def pack_command(
    dataset: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset folder of isplab proxy generate.", show_default=False)],
    output: Annotated[Path, typer.Argument(metavar="OUTPUT_DIR", help="Packed dataset folder (dataset.json, manifest, pack/*.npz).", show_default=False)],
    shard_size: Annotated[int, typer.Option("--shard-size", help="Images per .npz shard.")] = 64,
    overwrite: Overwrite = False,
) -> None:
    """Pack a dataset's images as float16 .npz shards (to carry it to a GPU machine); proxy train and test read it like the original."""
    from isplab.workflows.proxy.pack import pack_dataset, packed_summary

    console.print(packed_summary(pack_dataset(dataset, output, shard_size=shard_size, overwrite=overwrite)), highlight=False)


@app.command("test")
def test_command(
    dataset: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset folder of isplab proxy generate.", show_default=False)],
    model: Model,
    output: Annotated[Path, typer.Option("--output", "-o", help="Report folder (report.html, report_grid.png, report_metrics.json).", show_default=False)],
    overwrite: Overwrite = False,
) -> None:
    """Score a proxy on a dataset's held-out images and parameter values (PSNR, SSIM, worst samples, grid)."""
    from isplab.workflows.proxy.evaluate import test_proxy

    result = test_proxy(dataset, model, output, overwrite=overwrite)
    for group, scores in result.groups.items():
        console.print(f"{group}: {scores['n']} samples, PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.4f}", highlight=False)
    console.print(f"report: {result.report}", highlight=False)


@app.command("regress")
def regress_command(
    block: Annotated[str, typer.Argument(help="The block the proxy models.", show_default=False)],
    model: Model,
    target: Annotated[Path | None, typer.Option("--target", help="Target image (TIFF, linear RGB, the block on).", show_default=False)] = None,
    input: Annotated[Path | None, typer.Option("--input", help="The block-off image (TIFF).", show_default=False)] = None,
    sample: Annotated[str | None, typer.Option("--sample", help="A dataset sample id: its input, output, raw and true parameters.", show_default=False)] = None,
    dataset: Annotated[Path | None, typer.Option("--dataset", help="Dataset of --sample and of the raws (default: the model's training set).", show_default=False)] = None,
    raw: Annotated[Path | None, typer.Option("--raw", help="Raw to render the recovered parameters from (render-back check) without --sample.", show_default=False)] = None,
    iters: Annotated[int, typer.Option("--iters", help="Adam steps on the parameters.")] = 100,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate (unit parameter range).")] = 0.05,
    polish: Annotated[int, typer.Option("--polish", help="L-BFGS iterations after Adam (0: Adam only).")] = 20,
    restarts: Annotated[int, typer.Option("--restarts", help="Proxy regressions from this many random starts (seeds SEED, SEED+1, ...); the best fit to the target is kept.")] = 1,
    search: Annotated[bool, typer.Option("--search/--no-search", help="Also run Nelder-Mead directly on the renderer.")] = True,
    search_renders: Annotated[int, typer.Option("--search-renders", help="Render budget of the Nelder-Mead search.")] = 60,
    refine: Annotated[int, typer.Option("--refine", help="Renders of a refinement on the renderer started at the proxy's answer (0: none).")] = 0,
    refine_method: Annotated[str, typer.Option("--refine-method", help="lm (Levenberg-Marquardt, finite-difference Jacobian: one render per parameter and step) or nelder-mead.")] = "lm",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder for regress.json and the render-back TIFF/XMP.", show_default=False)] = None,
    overwrite: Overwrite = False,
    seed: Seed = 0,
    darktable_cli: Annotated[str | None, typer.Option("--darktable-cli", help="darktable-cli to run (default: the one on PATH).", show_default=False)] = None,
) -> None:
    """Recover a block's slider values from a target image through the frozen proxy; render them back and compare with a derivative-free search on the renderer."""
    from isplab.workflows.proxy.regress import RegressOptions, regress

    r = regress(RegressOptions(
        block=block, model=model, target=target, input=input, sample=sample, dataset=dataset, raw=raw, iters=iters,
        lr=lr, polish=polish, seed=seed, restarts=restarts, search=search, search_renders=search_renders, refine=refine,
        refine_method=refine_method, output=output, overwrite=overwrite, darktable_cli=darktable_cli,
    ))  # fmt: skip
    for name in r.params:
        line = f"{name}: recovered {r.recovered[name]:.4g} (start {r.start[name]:.4g})"
        if r.truth is not None:
            line += f", truth {r.truth[name]:.4g}, error {r.error_percent[name]:.2f}% of range"
        console.print(line, highlight=False)
    console.print(f"proxy: {r.proxy_seconds:.2f} s, proxy PSNR {r.proxy_psnr:.2f} dB", highlight=False)
    if r.render_back_psnr is not None:
        console.print(f"render-back ({r.backend}): PSNR {r.render_back_psnr:.2f} dB against the target", highlight=False)
    else:
        console.print("render-back check, search and refinement skipped: they need the raw (--sample ID or --raw DNG)", highlight=False)
    for s, what in ((r.search, "Nelder-Mead on the renderer"), (r.refined, f"refined on the renderer from the proxy's answer ({r.refined['method'] if r.refined else ''})")):
        if s is None:
            continue
        line = f"{what}: {s['renders']} renders, {s['seconds']:.2f} s, PSNR {s['psnr']:.2f} dB"
        if "error_percent" in s:
            line += ", errors " + ", ".join(f"{n} {e:.2f}%" for n, e in s["error_percent"].items())
        console.print(line, highlight=False)
    for path in r.written:
        console.print(f"wrote {path}", highlight=False)


@app.command("sweep")
def sweep_command(
    block: Annotated[str, typer.Argument(help="The block the proxy models.", show_default=False)],
    param: Annotated[str, typer.Argument(metavar="PARAM", help="The parameter to sweep across its trained range.", show_default=False)],
    model: Model,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder: frames/frame_0000.png..., sweep.mp4, sweep.gif, sweep.json.", show_default=False)],
    image: Annotated[Path | None, typer.Option("--image", help="Raw (DNG) to sweep on.", show_default=False)] = None,
    sample: Annotated[str | None, typer.Option("--sample", help="A dataset sample: its image and other parameter values.", show_default=False)] = None,
    dataset: Annotated[Path | None, typer.Option("--dataset", help="Dataset (default: the model's training set): renderer, size, fixed values.", show_default=False)] = None,
    steps: Annotated[int, typer.Option("--steps", help="Frames.")] = 100,
    fps: Annotated[int, typer.Option("--fps", help="Frames per second of the MP4 and GIF.")] = 25,
    render: Annotated[bool, typer.Option("--render/--no-render", help="Render each frame with darktable (or the builtin ops) beside the proxy.")] = True,
    overwrite: Overwrite = False,
    darktable_cli: Annotated[str | None, typer.Option("--darktable-cli", help="darktable-cli to run (default: the one on PATH).", show_default=False)] = None,
) -> None:
    """Frames across one parameter's range, proxy beside the renderer, as PNGs, an MP4 and a GIF."""
    from isplab.workflows.proxy.sweep import SweepOptions, sweep

    r = sweep(SweepOptions(block=block, param=param, model=model, output=output, image=image, sample=sample,
                           dataset=dataset, steps=steps, fps=fps, render=render, overwrite=overwrite,
                           darktable_cli=darktable_cli))  # fmt: skip
    scores = [p for p in r.psnr if p is not None]
    if scores:
        console.print(f"proxy vs renderer: PSNR {min(scores):.2f} to {max(scores):.2f} dB over {len(scores)} frames", highlight=False)
    console.print(f"wrote {len(r.frames)} frames, {r.mp4} and {r.gif}", highlight=False)


pipeline_app = typer.Typer(
    help="Chains of proxies in darktable's pipeline order, described by a TOML file (docs/proxy.md, Pipeline): "
    "score the chain against the real backend (eval) or recover every chained parameter from a target (regress).",
    no_args_is_help=True,
)
app.add_typer(pipeline_app, name="pipeline")
Config = Annotated[Path, typer.Argument(metavar="CONFIG", help="Pipeline description (TOML): blocks with their model.pt, images, backend.", show_default=False)]


@pipeline_app.command("eval")
def pipeline_eval_command(
    config: Config,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder: pipeline_eval.json, pipeline_eval.csv, pipeline_grid.png.", show_default=False)],
    settings: Annotated[int, typer.Option("--settings", "-n", help="Random settings: a Latin hypercube over every chained parameter.")] = 16,
    seed: Seed = 0,
    device: Device = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Render N random settings with the backend (all chained modules in one XMP) and with the chained proxies; PSNR per setting, mean and worst, grid of the worst and median."""
    from isplab.workflows.proxy.pipeline import EvalOptions, evaluate_pipeline

    r = evaluate_pipeline(EvalOptions(config=config, output=output, settings=settings, seed=seed, device=device, overwrite=overwrite))
    console.print(f"chain {' -> '.join(r.order)} ({r.backend}), {len(r.settings)} settings", highlight=False)
    for s in r.settings:
        values = ", ".join(f"{k} {v:.4g}" for k, v in s["values"].items())
        console.print(f"setting {s['index']} ({s['image']}): PSNR {s['psnr']:.2f} dB  [{values}]", highlight=False)
    console.print(f"PSNR mean {r.mean_psnr:.2f} dB, median {r.median_psnr:.2f} dB, worst {r.worst_psnr:.2f} dB (setting {r.worst_index})", highlight=False)
    for path in r.written:
        console.print(f"wrote {path}", highlight=False)


@pipeline_app.command("regress")
def pipeline_regress_command(
    config: Config,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder: pipeline_regress.json, render_back.tif/.xmp, target.tif (generated target).", show_default=False)],
    target: Annotated[Path | None, typer.Option("--target", help="Target image (TIFF, linear, the backend's render size). Default: the backend's render of a random setting (truth known).", show_default=False)] = None,
    image: Annotated[Path | None, typer.Option("--image", help="The raw the target comes from (default: the config's first image).", show_default=False)] = None,
    iters: Annotated[int, typer.Option("--iters", help="Adam steps per restart.")] = 200,
    lr: Annotated[float, typer.Option("--lr", help="Initial Adam rate on unit parameters (cosine-annealed to 1 %).")] = 0.05,
    polish: Annotated[int, typer.Option("--polish", help="L-BFGS iterations after Adam, per restart (0: Adam only).")] = 30,
    restarts: Annotated[int, typer.Option("--restarts", help="Random starts; the lowest final proxy loss wins.")] = 3,
    refine: Annotated[int, typer.Option("--refine", help="Then at most N renders of a refinement on the renderer from the proxies' answer (0: none); the best is written as refined.tif/.xmp.")] = 0,
    refine_method: Annotated[str, typer.Option("--refine-method", help="lm (Levenberg-Marquardt, finite-difference Jacobian: one render per parameter and step) or nelder-mead.")] = "lm",
    seed: Seed = 0,
    device: Device = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Recover every chained parameter from a target through the frozen proxies, write them into one XMP and render it back."""
    from isplab.workflows.proxy.pipeline import RegressOptions, regress_pipeline

    r = regress_pipeline(RegressOptions(config=config, output=output, target=target, image=image, iters=iters, lr=lr, polish=polish,
                                        restarts=restarts, refine=refine, refine_method=refine_method, seed=seed, device=device,
                                        overwrite=overwrite))  # fmt: skip
    console.print(f"chain {' -> '.join(r.order)} ({r.backend}): {len(r.restarts)} restarts, {r.proxy_seconds:.2f} s", highlight=False)
    for key in r.keys:
        line = f"{key}: recovered {r.recovered[key]:.4g}"
        if r.truth is not None:
            line += f", truth {r.truth[key]:.4g}, error {r.error_percent[key]:.2f}% of range"
        console.print(line, highlight=False)
    console.print(f"proxy chain PSNR {r.proxy_psnr:.2f} dB; render-back ({r.backend}) PSNR {r.render_back_psnr:.2f} dB against the target", highlight=False)
    if r.refined is not None:
        line = f"refined on the renderer from the proxies' answer ({r.refined['method']}): PSNR {r.refined['psnr']:.2f} dB, {r.refined['renders']} renders, {r.refined['seconds']:.1f} s"
        if "error_percent" in r.refined:
            line += f", mean error {sum(r.refined['error_percent'].values()) / len(r.refined['error_percent']):.2f}% of range"
        console.print(line, highlight=False)
    for path in r.written:
        console.print(f"wrote {path}", highlight=False)
