"""The ``isplab`` command line: ``isplab <workflow> <verb>``.

User-caused errors print one line (``error: ...``) and exit 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from isplab import __version__
from isplab.cli_options import Device, Overwrite, Seed
from isplab.errors import IsplabError

console = Console(stderr=True, soft_wrap=True)  # one error line, never folded at 80 columns
app = typer.Typer(
    help="isplab: learned camera image processing, from raw files to deployed networks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"isplab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    _state["debug"] = debug


data_app = typer.Typer(help="Synthetic raw datasets and raw-file inspection.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("synth")
def data_synth(
    out_dir: Path = typer.Argument(..., help="Directory for the DNGs, targets and manifest."),
    count: int = typer.Option(8, "--count", "-n", help="Number of samples."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same files."),
    size: str = typer.Option("512x384", "--size", help="Image size WIDTHxHEIGHT (even)."),
    pattern: str = typer.Option("RGGB", "--pattern", help="CFA pattern: RGGB, BGGR, GRBG or GBRG."),
    source: list[str] = typer.Option(
        None, "--source", help="Source image(s), repeatable: 'training' (default: dead-leaves and procedural scenes, real training cameras), 'heldout' (the bundled photographs, held-out cameras; for testing), a built-in name (deadleaves, chart, texture, astronaut, ...) or an image file."
    ),
    noise: bool = typer.Option(True, "--noise/--no-noise", help="Add shot/read noise."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dataset in OUT_DIR."),
) -> None:
    """Synthesise DNG raws from sRGB images by unprocessing (Brooks et al. 2019), with ground truth."""
    from isplab.data.sources import TRAINING_SOURCES
    from isplab.data.synth import SensorSpec, parse_size, synthesize_dataset

    result = synthesize_dataset(
        out_dir,
        count,
        seed=seed,
        size=parse_size(size),
        sensor=SensorSpec(pattern=pattern),
        sources=source or TRAINING_SOURCES,
        noise=noise,
        overwrite=overwrite,
    )
    console.print(f"wrote {len(result.samples)} DNGs and {result.manifest}")
    for failure in result.failures:
        console.print(f"[red]failed[/] {failure['file']}: {failure['error']}")
    if result.failures:
        raise typer.Exit(1)


@data_app.command("inspect")
def data_inspect(files: list[Path] = typer.Argument(..., help="Raw files (DNG, NEF, CR2, ARW, ...).")) -> None:
    """Print the metadata isplab reads from raw files."""
    from rich.table import Table

    from isplab.io.raw import read_raw

    failed = 0
    for path in files:
        try:
            raw = read_raw(path)
        except IsplabError as error:
            console.print(f"[red]error:[/] {escape(str(error))}", highlight=False)
            failed += 1
            continue
        table = Table(title=str(path), show_header=False)
        h, w = raw.mosaic.shape
        rows = {
            "camera": f"{raw.make} {raw.model}",
            "size": f"{w}x{h}",
            "CFA pattern": raw.cfa_pattern,
            "black level (R,Gr,Gb,B)": ", ".join(f"{v:g}" for v in raw.black_level),
            "white level": str(raw.white_level),
            "as-shot neutral": ", ".join(f"{v:.4f}" for v in raw.as_shot_neutral),
            "XYZ->camera matrix": "unknown (not in the file nor LibRaw's tables)"
            if raw.color_matrix is None
            else "; ".join(", ".join(f"{v:.4f}" for v in row) for row in raw.color_matrix),
            "exposure time (s)": str(raw.exposure_time),
            "ISO": str(raw.iso),
            "aperture": str(raw.aperture),
        }
        for key, value in rows.items():
            table.add_row(key, value)
        Console().print(table)
    if failed:
        raise typer.Exit(1)


from isplab.workflows.awb.cli import app as awb_app  # noqa: E402

app.add_typer(awb_app, name="awb")

from isplab.workflows.isp.cli import app as isp_app  # noqa: E402

app.add_typer(isp_app, name="isp")

from isplab.workflows.proxy.cli import app as proxy_app  # noqa: E402

app.add_typer(proxy_app, name="proxy")

from isplab.workflows.sky.cli import app as sky_app  # noqa: E402

app.add_typer(sky_app, name="sky")

from isplab.workflows.genisp.cli import app as genisp_app  # noqa: E402

app.add_typer(genisp_app, name="genisp")


@app.command("demo")
def demo(
    output: Path = typer.Option(Path("runs/demo"), "--output", "-o", help="Demo folder: report.html and one folder per section."),
    count: int = typer.Option(6, "--count", "-n", help="Synthetic DNGs of the data section."),
    size: str = typer.Option("512x384", "--size", help="Their size WIDTHxHEIGHT."),
    section: list[str] = typer.Option(
        None, "--section", help="Run only these sections (repeatable): data, awb, isp, proxy, sky, genisp. Default: all."
    ),
    seed: Seed = 0,
    device: Device = "auto",
    overwrite: Overwrite = False,
    out: Path | None = typer.Option(None, "--out", hidden=True, help="Old spelling of --output."),
) -> None:
    """Every workflow on synthetic data, timed, in one report (OUTPUT/report.html).

    One line per stage is printed; third-party output (Lightning, the TFLite converter) goes to OUTPUT/<section>/console.log unless --debug.
    """
    from isplab.data.synth import parse_size
    from isplab.demo import run_demo

    report = run_demo(
        out or output,
        seed=seed,
        device=device,
        sections=section or None,
        overwrite=overwrite,
        debug=_state["debug"],
        options={"data": {"count": count, "size": parse_size(size)}},
    )
    console.print(f"report: {report}", highlight=False)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except IsplabError as error:
        if _state["debug"]:
            raise
        _fail(str(error))
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except OSError as error:  # a file that could not be read or written: name it, in one line
        if _state["debug"]:
            raise
        if error.filename is None:
            _fail(f"{type(error).__name__}: {error} (run with --debug for the traceback)")
        paths = str(error.filename) + (f" -> {error.filename2}" if error.filename2 is not None else "")
        _fail(f"cannot read/write {paths}: {error.strerror or type(error).__name__} (run with --debug for the traceback)")
    except Exception as error:  # unexpected: still one line unless --debug
        if _state["debug"]:
            raise
        _fail(f"{type(error).__name__}: {error} (run with --debug for the traceback)")


def _fail(message: str) -> None:
    console.print(f"[red]error:[/] {escape(message)}", highlight=False)
    sys.exit(1)


if __name__ == "__main__":
    main()
