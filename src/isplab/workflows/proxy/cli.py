"""``isplab proxy ...``: neural proxies of darktable's processing blocks (``docs/proxy.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from isplab.cli_options import Overwrite, Progress, Seed, Workers

app = typer.Typer(help="Neural proxies of darktable's processing blocks: datasets (generate).", no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)


@app.command("generate")
def generate_command(
    block: Annotated[str, typer.Argument(help="Block: exposure, temperature, colorbalancergb, sharpen, hazeremoval or lowpass.", show_default=False)],
    output_dir: Annotated[Path, typer.Argument(metavar="OUTPUT_DIR", help="Dataset folder (dataset.json, inputs/, outputs/, manifest).", show_default=False)],
    count: Annotated[int, typer.Option("-n", "--count", help="Samples: Latin-hypercube parameter vectors, image i mod M each.")] = 64,
    param: Annotated[
        list[str] | None,
        typer.Option("-p", "--param", help="Parameters to vary: NAME, NAME=LO:HI or NAME=VALUE (fixed); comma-separated or repeated. Default: all over darktable's soft ranges; unnamed ones stay at default.", show_default=False),
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
