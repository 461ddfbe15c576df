"""Command-line options every workflow shares, so that each is spelled and explained once.

``docs/conventions.md`` is the contract: a workflow's CLI uses these annotated types for the options
they cover instead of declaring its own. Typer shows each default in ``--help``.

Example::

    from isplab.cli_options import Device, Devices, Strategy, NumNodes, Overwrite, Progress, trainer_options

    @app.command("train")
    def train(dataset: Path, model_dir: Path, device: Device = "auto", devices: Devices = "auto",
              strategy: Strategy = "auto", num_nodes: NumNodes = 1, overwrite: Overwrite = False, ...):
        options = trainer_options(device, devices, strategy, num_nodes)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from isplab.errors import IsplabError

if TYPE_CHECKING:
    from isplab.engine.run import TrainingInterrupted

__all__ = [
    "Device",
    "Devices",
    "Strategy",
    "NumNodes",
    "Overwrite",
    "Resume",
    "Progress",
    "Seed",
    "Workers",
    "Quantize",
    "QUANTIZE_CHOICES",
    "TrainerOptions",
    "trainer_options",
    "parse_quantize",
    "exit_interrupted",
]

Device = Annotated[
    str, typer.Option("--device", help="cpu, cuda, mps, gpu or auto (CUDA, then MPS, then CPU).", show_default=True)
]
Devices = Annotated[
    str, typer.Option("--devices", help="Devices per node: a count (4), a list (0,2) or auto.", show_default=True)
]
Strategy = Annotated[
    str, typer.Option("--strategy", help="auto, or ddp for several GPUs/nodes (see docs/training.md).", show_default=True)
]
NumNodes = Annotated[int, typer.Option("--num-nodes", help="Machines (torchrun/SLURM set the rest).", show_default=True)]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (default: off; an existing output is refused).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the training run already in the output folder (default: off).")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same result.", show_default=True)]
Workers = Annotated[int | None, typer.Option("--workers", help="Parallel worker processes (default: all cores).")]

QUANTIZE_CHOICES = ("float16", "int8")
_QUANTIZE_ALIASES = {"fp16": "float16", "f16": "float16", "half": "float16", "float16": "float16", "int8": "int8"}
Quantize = Annotated[
    str | None,
    typer.Option("--quantize", help="float16 or int8 (weights; float inputs and outputs). Default: float32."),
]


def parse_quantize(value: str | None) -> str | None:
    """Normalise ``--quantize``: ``None``/``float32`` -> ``None``; ``fp16`` is an old alias of ``float16``.

    Raises:
        IsplabError: anything else.
    """
    if value is None or value.lower() in ("none", "float32", "fp32"):
        return None
    try:
        return _QUANTIZE_ALIASES[value.lower()]
    except KeyError:
        raise IsplabError(f"bad --quantize {value!r}: expected float16 or int8") from None


@dataclass(frozen=True)
class TrainerOptions:
    """Where and on how many devices a training command runs; the keyword arguments of
    :func:`isplab.engine.build_trainer` of the same names."""

    device: str = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = "auto"
    num_nodes: int = 1

    def as_kwargs(self) -> dict[str, Any]:
        """``build_trainer(**options.as_kwargs())``."""
        return asdict(self)


def trainer_options(device: str = "auto", devices: str = "auto", strategy: str = "auto", num_nodes: int = 1) -> TrainerOptions:
    """Parse the shared ``--device/--devices/--strategy/--num-nodes`` values.

    ``--devices`` accepts ``auto``, ``-1`` (all), a count (``4``) or a comma list (``0,2``).

    Raises:
        IsplabError: a ``--devices`` value of another form, or ``--num-nodes`` below 1.
    """
    text = str(devices).strip()
    parsed: int | str | list[int]
    try:
        if text == "auto":
            parsed = "auto"
        elif "," in text:
            parsed = [int(v) for v in text.split(",") if v.strip()]
        else:
            parsed = int(text)
    except ValueError:
        raise IsplabError(f"bad --devices {devices!r}: expected auto, a count such as 2, or a list such as 0,2") from None
    if num_nodes < 1:
        raise IsplabError(f"bad --num-nodes {num_nodes}: expected 1 or more")
    return TrainerOptions(device=device, devices=parsed, strategy=strategy, num_nodes=num_nodes)


def exit_interrupted(stop: TrainingInterrupted) -> NoReturn:
    """End a training command stopped by Ctrl-C: print what was kept and how to resume (stderr),
    then exit 130, Ctrl-C's usual status (``docs/conventions.md`` section 5)."""
    typer.echo(stop.resume_hint(), err=True)
    raise typer.Exit(130)
