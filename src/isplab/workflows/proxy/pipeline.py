"""Chains of proxies against the real pipeline (``isplab proxy pipeline eval|regress``).

A pipeline description (TOML, read with :mod:`tomllib`; ``docs/proxy.md`` has an example) lists
the blocks to chain, each with its trained proxy (``model = "..../model.pt"``, or ``"builtin"``
for isplab's exact differentiable op), optionally parameters fixed (``NAME = VALUE``) or sampled
over a narrower range (``NAME = [LO, HI]``), plus the input raws and the backend. The chain runs
in **darktable's pipeline order** (:data:`~isplab.workflows.proxy.blocks.IOP_ORDER_V30`, the
v3.0 module order of darktable 4.2), whatever order the file lists the blocks in: darktable
itself applies a history in that order.

* **Evaluation** (:func:`evaluate_pipeline`): ``N`` settings, a Latin hypercube over every
  chained parameter; each rendered by the backend in one go (darktable: one darktable-cli call
  whose XMP history holds every chained module; builtin: isplab's ops composed) and by the chain
  of proxies, each proxy's output feeding the next, starting from the render with every chained
  block off. ``temperature`` (before demosaic in darktable) is handled as in single-block
  training: its proxy maps the demosaiced, un-white-balanced render to the balanced one, so with
  ``temperature`` in the chain the chain's input has no white balance. Reported: PSNR (linear
  values, peak 1) per setting, mean, median and worst, and a grid for the worst and the median
  setting.
* **Joint regression** (:func:`regress_pipeline`): all chained parameters, as unit values
  (``[0, 1]`` over each parameter's chained range), start at random points (``restarts``) and
  Adam minimises the MSE between the proxy chain's render and the target, through every frozen
  proxy (:func:`~isplab.workflows.proxy.regress.fit_unit`, the rate annealed to 1 % of ``lr``),
  then L-BFGS polishes the result (``polish`` iterations: parameters that trade off against each
  other, such as exposure and contrast, leave Adam crawling along a valley); the restart with the
  lowest final loss is kept. The target is an image, or (default) the
  backend's render of a random setting, whose truth is then known. The recovered values are
  written into one XMP and rendered by the backend (**render-back**), and compared with the
  target.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from isplab.engine import psnr, save_png
from isplab.errors import IsplabError
from isplab.io.paths import prepare_output_dir
from isplab.workflows.proxy.blocks import Block, get_block, pipeline_order

__all__ = [
    "BACKENDS",
    "EVAL_OUTPUTS",
    "EXACT",
    "REGRESS_OUTPUTS",
    "EvalOptions",
    "PipelineConfig",
    "RegressOptions",
    "Renderer",
    "Stage",
    "chain_forward",
    "evaluate_pipeline",
    "load_config",
    "parse_config",
    "regress_pipeline",
]

BACKENDS = ("darktable", "builtin")
#: ``model = "builtin"``: the block's own differentiable builtin op instead of a trained proxy.
EXACT = "builtin"
EVAL_OUTPUTS = ("pipeline_eval.json", "pipeline_eval.csv", "pipeline_grid.png")
REGRESS_OUTPUTS = ("pipeline_regress.json", "target.tif", "render_back.tif", "render_back.xmp", "refined.tif", "refined.xmp")
_TOP_KEYS = {"backend", "images", "size", "darktable_cli", "block"}
_BLOCK_KEYS = {"name", "model", "params"}


# ------------------------------------------------------------------------------------ the config


@dataclass
class Stage:
    """One chained block.

    Attributes:
        block: the block (table entry).
        model: its trained proxy, or ``None`` for the exact builtin op.
        model_path: where the proxy came from (``None``: exact op).
        inputs: the proxy's parameters in its own order (exact op: every block parameter).
        fixed: parameters held at a value (the proxy's training-time fixed values and the
            config's ``NAME = VALUE``), real units.
        varied: the chained parameters (sampled in ``eval``, optimised in ``regress``), in
            ``inputs`` order, with their ``ranges`` (real units).
    """

    block: Block
    model: torch.nn.Module | None
    model_path: Path | None
    inputs: list[str]
    fixed: dict[str, float]
    varied: list[str]
    ranges: dict[str, tuple[float, float]]

    @property
    def name(self) -> str:
        return self.block.name

    def full(self, values: dict[str, float]) -> dict[str, float]:
        """Every parameter of the block for the backend: ``values`` (varied), fixed, defaults."""
        return self.block.check_values({**self.fixed, **{n: float(values[n]) for n in self.varied}})

    def forward(self, x: torch.Tensor, unit: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """The stage's render of ``x`` ``(B, 3, H, W)`` for ``unit`` ``(B, len(varied))`` values
        in [0, 1] of the chained ranges. ``scale``: output pixels per raw pixel (exact ops)."""
        real = {}
        for j, n in enumerate(self.varied):
            lo, hi = self.ranges[n]
            real[n] = lo + unit[:, j] * (hi - lo)
        if self.model is not None:
            columns = [real[n] if n in real else torch.full((x.shape[0],), self.fixed[n], dtype=x.dtype, device=x.device) for n in self.inputs]
            values = torch.stack(columns, dim=1).to(x.dtype)
            return self.model(x, self.model.to_unit(values))
        from isplab.workflows.proxy.builtin import apply_block

        values = {**self.block.defaults(), **self.fixed}
        values.update({n: (v if v.shape[0] > 1 else v.reshape(())) for n, v in real.items()})
        return apply_block(self.block, x, values, scale)


@dataclass
class PipelineConfig:
    """A parsed pipeline description (:func:`load_config`)."""

    path: Path
    backend: str
    images: list[Path]
    stages: list[Stage]  # in darktable's pipeline order
    listed: list[str]  # the blocks in the order the file lists them
    size: tuple[int, int] | None = None
    darktable_cli: str | None = None

    @property
    def order(self) -> list[str]:
        return [s.name for s in self.stages]

    @property
    def params(self) -> list[tuple[Stage, str]]:
        """Every chained parameter, in unit-vector order (stages in pipeline order)."""
        return [(s, n) for s in self.stages for n in s.varied]

    @property
    def keys(self) -> list[str]:
        """``block.param`` names of :attr:`params`."""
        return [f"{s.name}.{n}" for s, n in self.params]

    def ranges(self) -> tuple[np.ndarray, np.ndarray]:
        lo = np.array([s.ranges[n][0] for s, n in self.params], dtype=np.float64)
        hi = np.array([s.ranges[n][1] for s, n in self.params], dtype=np.float64)
        return lo, hi

    def values(self, unit: np.ndarray) -> list[dict[str, float]]:
        """Unit values ``(D,)`` -> per stage ``{param: value}`` (float32-representable, as darktable
        stores them)."""
        lo, hi = self.ranges()
        real = lo + np.asarray(unit, dtype=np.float64) * (hi - lo)
        out, k = [], 0
        for s in self.stages:
            out.append({n: float(np.float32(real[k + j])) for j, n in enumerate(s.varied)})
            k += len(s.varied)
        return out

    def unit(self, values: list[dict[str, float]]) -> np.ndarray:
        """Inverse of :meth:`values`."""
        lo, hi = self.ranges()
        real = np.array([values[i][n] for i, s in enumerate(self.stages) for n in s.varied], dtype=np.float64)
        return (real - lo) / (hi - lo)

    def flat(self, values: list[dict[str, float]]) -> dict[str, float]:
        """Per-stage values -> ``{block.param: value}``."""
        return {f"{s.name}.{n}": float(values[i][n]) for i, s in enumerate(self.stages) for n in s.varied}

    def describe(self) -> list[dict]:
        return [
            {"key": f"{s.name}.{n}", "block": s.name, "param": n, "low": s.ranges[n][0], "high": s.ranges[n][1], "unit": s.block.param(n).unit}
            for s, n in self.params
        ]


def load_config(path: str | Path, *, device: str | torch.device = "cpu") -> PipelineConfig:
    """Read and check a pipeline description (TOML). Relative paths are relative to its folder.

    Raises:
        IsplabError: a missing or unparsable file, an unknown key, backend or block, a block
            listed twice, a missing model file or a model of another block (or of another
            backend), a parameter not in the block, a value or range outside darktable's range
            or the proxy's trained range, a fixed value other than the proxy's, a missing image,
            or nothing left to vary. One line each, naming the file and the item.
    """
    path = Path(path)
    if not path.is_file():
        raise IsplabError(f"pipeline config {path} does not exist: expected a TOML file (see docs/proxy.md, Pipeline)")
    try:
        document = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise IsplabError(f"cannot parse pipeline config {path}: {error} (expected TOML)") from None
    return parse_config(document, path, device=device)


def parse_config(document: dict, path: str | Path, *, device: str | torch.device = "cpu") -> PipelineConfig:
    """:func:`load_config` on an already parsed TOML ``document`` (``path`` for messages and
    relative paths)."""
    from isplab.workflows.proxy.evaluate import load_proxy

    path = Path(path)
    where = f"pipeline config {path}"
    base = path.parent
    unknown = sorted(set(document) - _TOP_KEYS)
    if unknown:
        raise IsplabError(f"{where}: unknown key {unknown[0]!r}: expected {', '.join(sorted(_TOP_KEYS))}")
    backend = document.get("backend", "darktable")
    if backend not in BACKENDS:
        raise IsplabError(f"{where}: unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    images = document.get("images")
    if isinstance(images, str):
        images = [images]
    if not images or not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise IsplabError(f"{where}: images must be a raw file or a list of them (images = [\"a.dng\"])")
    files = []
    for name in images:
        file = (base / name).resolve() if not Path(name).is_absolute() else Path(name)
        if not file.is_file():
            raise IsplabError(f"{where}: image {name} ({file}) does not exist: expected a raw file (DNG)")
        files.append(file)
    size = document.get("size")
    if size is not None:
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            raise IsplabError(f"{where}: size must be [WIDTH, HEIGHT] (positive integers), got {size!r}")
        size = (int(size[0]), int(size[1]))
    cli = document.get("darktable_cli")
    if cli is not None and not isinstance(cli, str):
        raise IsplabError(f"{where}: darktable_cli must be a path (a string), got {cli!r}")
    entries = document.get("block")
    if not entries or not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise IsplabError(f"{where}: no [[block]] tables: expected at least one [[block]] with name and model")

    stages: dict[str, Stage] = {}
    listed = []
    for k, entry in enumerate(entries, start=1):
        bad = sorted(set(entry) - _BLOCK_KEYS)
        if bad:
            raise IsplabError(f"{where}: block {k} has unknown key {bad[0]!r}: expected {', '.join(sorted(_BLOCK_KEYS))}")
        if not isinstance(entry.get("name"), str):
            raise IsplabError(f"{where}: block {k} has no name: expected name = \"exposure\" (or another block)")
        block = get_block(entry["name"])
        if block.name in stages:
            raise IsplabError(f"{where}: block {block.name} is listed twice: expected each block once")
        listed.append(block.name)
        model_name = entry.get("model")
        if not isinstance(model_name, str):
            raise IsplabError(f"{where}: block {block.name} has no model: expected model = \"path/to/model.pt\" (or \"{EXACT}\")")
        stages[block.name] = _stage(block, model_name, entry.get("params", {}), base, backend, where, load_proxy, device)

    order = pipeline_order(stages)
    config = PipelineConfig(path, backend, files, [stages[n] for n in order], listed, size, cli)
    if not config.params:
        raise IsplabError(f"{where}: every parameter is fixed: expected at least one to vary")
    return config


def _stage(block: Block, model_name: str, params, base: Path, backend: str, where: str, load_proxy, device) -> Stage:
    if not isinstance(params, dict):
        raise IsplabError(f"{where}: params of block {block.name} must be a table (NAME = VALUE or NAME = [LO, HI])")
    if not block.builtin and (backend == "builtin" or model_name == EXACT):
        raise IsplabError(f"{where}: block {block.name} has no builtin op: expected backend = \"darktable\" and a trained proxy")
    if model_name == EXACT:
        if block.name == "temperature":
            raise IsplabError(f"{where}: temperature acts on the raw mosaic and has no exact builtin stage: give a trained proxy (model = \"...\")")
        model, model_path = None, None
        inputs = list(block.param_names)
        trained = {n: (block.param(n).min, block.param(n).max) for n in inputs}
        model_fixed: dict[str, float] = {}
    else:
        model_path = (base / model_name) if not Path(model_name).is_absolute() else Path(model_name)
        if not model_path.is_file():
            raise IsplabError(f"{where}: model {model_name} of block {block.name} ({model_path}) does not exist: expected a model.pt of isplab proxy train")
        model = load_proxy(model_path, block.name).to(device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        meta = model.proxy_config["meta"]
        trained_on = meta.get("backend")
        if trained_on and trained_on != backend:
            raise IsplabError(f"{where}: model {model_path} was trained on {trained_on} renders but the pipeline's backend is {backend}")
        inputs = list(meta["params"])
        trained = {n: (float(lo), float(hi)) for n, (lo, hi) in zip(inputs, model.proxy_config["ranges"])}
        model_fixed = {n: float(v) for n, v in (meta.get("fixed") or {}).items()}

    fixed = dict(model_fixed)
    ranges: dict[str, tuple[float, float]] = {} if model is None else dict(trained)
    for name, value in params.items():
        p = block.param(name)  # unknown -> IsplabError naming the block
        label = f"{where}: {block.name}.{name}"
        if isinstance(value, bool) or not (isinstance(value, (int, float)) or (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))):
            raise IsplabError(f"{label} = {value!r}: expected a number (fixed) or [LO, HI] (a range)")
        values = [float(v) for v in value] if isinstance(value, list) else [float(value)]
        if len(values) == 2 and not values[0] < values[1]:
            raise IsplabError(f"{label} = {value!r}: expected [LO, HI] with LO < HI")
        for v in values:
            if not p.min <= v <= p.max:
                raise IsplabError(f"{label} = {v:g} is outside darktable's range [{p.min:g}, {p.max:g}]" + (f" {p.unit}" if p.unit else ""))
        if name in model_fixed:
            if len(values) == 2 or not math.isclose(values[0], model_fixed[name], rel_tol=1e-6, abs_tol=1e-6):
                raise IsplabError(f"{label}: the proxy {model_path} was trained with {name} fixed at {model_fixed[name]:g}: expected that value or nothing")
            continue
        if model is not None:
            if name not in trained:
                raise IsplabError(f"{label}: the proxy {model_path} does not take {name}")  # every block parameter is an input or fixed
            lo, hi = trained[name]
            tol = 1e-6 * max(1.0, hi - lo)
            if any(not lo - tol <= v <= hi + tol for v in values):
                raise IsplabError(f"{label} = {value!r} is outside the range the proxy {model_path} was trained on [{lo:g}, {hi:g}]")
        if len(values) == 2:
            ranges[name] = (values[0], values[1])
        else:
            ranges.pop(name, None)
            fixed[name] = values[0]
    varied = [n for n in inputs if n in ranges]
    return Stage(block, model, model_path, inputs, fixed, varied, {n: ranges[n] for n in varied})


# --------------------------------------------------------------------------------- computation


def chain_forward(config: PipelineConfig, x: torch.Tensor, unit: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """The chain's render of ``x``: each stage's output feeds the next, in pipeline order.
    ``unit`` ``(B, D)``: every chained parameter in [0, 1] of its range (:attr:`PipelineConfig.params`)."""
    k = 0
    for stage in config.stages:
        n = len(stage.varied)
        x = stage.forward(x, unit[:, k : k + n], scale)
        k += n
    return x


def _to_tensor(image: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None].to(device)


class Renderer:
    """The backend's renders of a chain: every chained block off (the chain's input), or every
    chained block on with given values (one darktable-cli call, or the builtin ops composed)."""

    def __init__(self, config: PipelineConfig, workdir: Path) -> None:
        self.config = config
        self.workdir = Path(workdir)
        self.renders = 0
        self.seconds = 0.0
        self.info = None
        self._inputs: dict[Path, tuple[np.ndarray, float]] = {}
        self._wb: dict[Path, np.ndarray] = {}
        blocks = [s.block for s in config.stages]
        if config.backend == "darktable":
            from isplab.workflows.proxy.darktable import check_layouts, find_darktable

            self.info = find_darktable(config.darktable_cli)
            extra = [] if "temperature" in config.order else [get_block("temperature")]
            check_layouts(self.info, blocks + extra)
        else:
            from isplab.io.raw import read_raw

            for image in config.images:
                read_raw(image)  # a corrupt raw is refused before any work

    @property
    def name(self) -> str:
        return "builtin" if self.info is None else f"darktable {self.info.version}"

    def _wb_gains(self, image: Path) -> np.ndarray:
        if image not in self._wb:
            from isplab.workflows.proxy.generate import _wb_gains

            self._wb[image] = np.asarray(_wb_gains(image))
        return self._wb[image]

    def _darktable(self, image: Path, steps, tif: Path, xmp: Path) -> np.ndarray:
        import tifffile

        from isplab.workflows.proxy.darktable import RenderJob, render, write_chain_xmp

        write_chain_xmp(xmp, steps, self._wb_gains(image))
        self.seconds += render(self.info, RenderJob(image, xmp, tif, self.config.size), self.workdir / "config")
        return tifffile.imread(tif).astype(np.float32)

    def render_input(self, image: Path) -> tuple[np.ndarray, float]:
        """``(image (H, W, 3), scale)``: the render with every chained block off; ``scale`` =
        output pixels per raw pixel (builtin; 1 for darktable)."""
        image = Path(image)
        if image not in self._inputs:
            k = len(self._inputs)
            if self.info is not None:
                steps = [(s.block, None) for s in self.config.stages]
                out = self._darktable(image, steps, self.workdir / f"input_{k}.tif", self.workdir / f"input_{k}.xmp")
                self._inputs[image] = (out, 1.0)
            else:
                from isplab.workflows.proxy.builtin import develop

                gains = np.ones(3) if "temperature" in self.config.order else None
                with torch.no_grad():
                    x, scale = develop(image, gains, self.config.size)
                self._inputs[image] = (x[0].permute(1, 2, 0).contiguous().numpy(), scale)
        return self._inputs[image]

    def render(self, image: Path, values: list[dict[str, float]], tif: Path | None = None, xmp: Path | None = None) -> np.ndarray:
        """``(H, W, 3)`` float32: every chained block on with ``values`` (per stage, varied
        parameters; fixed ones added). ``tif``/``xmp``: keep the render and (darktable) its sidecar."""
        image = Path(image)
        self.renders += 1
        full = [s.full(v) for s, v in zip(self.config.stages, values)]
        if self.info is not None:
            steps = [(s.block, f) for s, f in zip(self.config.stages, full)]
            tif = tif or self.workdir / f"render_{self.renders}.tif"
            xmp = xmp or self.workdir / f"render_{self.renders}.xmp"
            return self._darktable(image, steps, tif, xmp)
        from isplab.workflows.proxy.builtin import apply_block, develop

        start = time.perf_counter()
        with torch.no_grad():
            if "temperature" in self.config.order:
                t = full[self.config.order.index("temperature")]
                x, scale = develop(image, np.array([t["red"], t["green"], t["blue"]]), self.config.size)
            else:
                x, scale = _to_tensor(self.render_input(image)[0], "cpu"), self.render_input(image)[1]
            for stage, f in zip(self.config.stages, full):
                if stage.name != "temperature":
                    x = apply_block(stage.block, x, f, scale)
        out = x[0].permute(1, 2, 0).contiguous().numpy().astype(np.float32)
        self.seconds += time.perf_counter() - start
        if tif is not None:
            import tifffile

            tifffile.imwrite(tif, out)
        if xmp is not None:
            from isplab.workflows.proxy.darktable import write_chain_xmp

            write_chain_xmp(xmp, [(s.block, f) for s, f in zip(self.config.stages, full)], self._wb_gains(image))
        return out


def _device(device: str) -> torch.device:
    from isplab.engine.trainer import resolve_accelerator

    return torch.device(resolve_accelerator(device))


# -------------------------------------------------------------------------------------- evaluate


@dataclass
class EvalOptions:
    """``isplab proxy pipeline eval CONFIG -o OUT [--settings N]``."""

    config: Path
    output: Path
    settings: int = 16
    seed: int = 0
    device: str = "auto"
    overwrite: bool = False


@dataclass
class EvalResult:
    backend: str
    order: list[str]
    settings: list[dict] = field(default_factory=list)  # {index, image, values, psnr, render_seconds}
    mean_psnr: float = float("nan")
    median_psnr: float = float("nan")
    worst_psnr: float = float("nan")
    worst_index: int = -1
    median_index: int = -1
    proxy_seconds: float = 0.0
    written: list[Path] = field(default_factory=list)


def evaluate_pipeline(opts: EvalOptions) -> EvalResult:
    """Score the proxy chain against the backend on ``settings`` random settings (see the
    module docstring); writes ``pipeline_eval.json``, ``pipeline_eval.csv`` and
    ``pipeline_grid.png`` into ``output``."""
    from isplab.workflows.proxy.evaluate import _grid
    from isplab.workflows.proxy.generate import latin_hypercube

    if opts.settings < 1:
        raise IsplabError(f"--settings must be at least 1, got {opts.settings}")
    device = _device(opts.device)
    config = load_config(opts.config, device=device)
    out = prepare_output_dir(opts.output, overwrite=opts.overwrite, names=EVAL_OUTPUTS, what="pipeline evaluation folder")
    unit = latin_hypercube(opts.settings, len(config.params), np.random.default_rng([opts.seed, 0]))
    workdir = Path(tempfile.mkdtemp(prefix="isplab-pipeline-"))
    try:
        renderer = Renderer(config, workdir)
        result = EvalResult(renderer.name, config.order)
        chain = {}

        def run(i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """``(input, backend render, proxy chain)`` of setting ``i``; the render is kept in
            the work folder, so the grid's rows re-read it instead of rendering again."""
            image = config.images[i % len(config.images)]
            values = config.values(unit[i])
            x_np, scale = renderer.render_input(image)
            tif = workdir / f"setting_{i}.tif"
            if tif.is_file():
                import tifffile

                target = _to_tensor(tifffile.imread(tif), device)
            else:
                before = renderer.seconds
                target = _to_tensor(renderer.render(image, values, tif=tif), device)
                chain["seconds"] = renderer.seconds - before
            x = _to_tensor(x_np, device)
            if x.shape != target.shape:
                raise IsplabError(f"the chain's input render of {image.name} is {tuple(x.shape[-2:])} but its output is {tuple(target.shape[-2:])}")
            u = torch.tensor(config.unit(values), dtype=torch.float32, device=device)[None]
            t0 = time.perf_counter()
            with torch.no_grad():
                pred = chain_forward(config, x, u, scale)
            chain["proxy"] = time.perf_counter() - t0
            return x, target, pred

        for i in range(opts.settings):
            _, target, pred = run(i)
            result.proxy_seconds += chain["proxy"]
            image = config.images[i % len(config.images)]
            result.settings.append({"index": i, "image": image.name, "values": config.flat(config.values(unit[i])),
                                    "psnr": float(psnr(pred, target)), "render_seconds": round(chain["seconds"], 4)})  # fmt: skip

        scores = np.array([s["psnr"] for s in result.settings])
        ranked = np.argsort(scores, kind="stable")
        result.worst_index = int(ranked[0])
        result.median_index = int(ranked[len(ranked) // 2])
        result.worst_psnr = float(scores[result.worst_index])
        result.median_psnr = float(np.median(scores))
        result.mean_psnr = float(np.mean(scores))
        shown = [result.worst_index] + ([result.median_index] if result.median_index != result.worst_index else [])
        grid = _grid([({}, *(t[0].cpu() for t in run(i))) for i in shown])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result.written.append(save_png(out / "pipeline_grid.png", grid))
    keys = config.keys
    with open(out / "pipeline_eval.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "image", *keys, "psnr", "render_seconds"])
        for s in result.settings:
            writer.writerow([s["index"], s["image"], *(s["values"][k] for k in keys), s["psnr"], s["render_seconds"]])
    result.written.append(out / "pipeline_eval.csv")
    document = {
        "config": str(config.path),
        "backend": result.backend,
        "order": config.order,
        "listed_order": config.listed,
        "models": {s.name: (str(s.model_path) if s.model_path else EXACT) for s in config.stages},
        "params": config.describe(),
        "seed": opts.seed,
        "settings": result.settings,
        "mean_psnr": result.mean_psnr,
        "median_psnr": result.median_psnr,
        "worst_psnr": result.worst_psnr,
        "worst_index": result.worst_index,
        "median_index": result.median_index,
        "grid_rows": shown,
        "proxy_seconds": result.proxy_seconds,
    }
    (out / "pipeline_eval.json").write_text(json.dumps(document, indent=2) + "\n")
    result.written.append(out / "pipeline_eval.json")
    return result


# --------------------------------------------------------------------------------------- regress


@dataclass
class RegressOptions:
    """``isplab proxy pipeline regress CONFIG -o OUT [--target T.tif]``.

    Attributes:
        target: the image to match (TIFF, linear, the size of the backend's render); ``None``:
            the backend's render of a random setting (``seed``), whose truth is then known.
        image: the raw the target comes from (default: the config's first image).
        iters, lr, polish, restarts: Adam steps per restart, its initial rate (annealed to 1 %),
            L-BFGS iterations after Adam (0: none), random starts (the lowest final proxy loss
            wins).
        refine: then at most this many renders of a refinement on the renderer itself, started at
            the proxies' answer (as ``proxy regress --refine``; 0: none); its best render is
            written as ``refined.tif`` and ``refined.xmp``.
        refine_method: ``"lm"`` (Levenberg-Marquardt) or ``"nelder-mead"``
            (:func:`isplab.workflows.proxy.regress.refine_on_renderer`).
    """

    config: Path
    output: Path
    target: Path | None = None
    image: Path | None = None
    iters: int = 200
    lr: float = 0.05
    polish: int = 30
    restarts: int = 3
    refine: int = 0
    refine_method: str = "lm"
    seed: int = 0
    device: str = "auto"
    overwrite: bool = False


@dataclass
class RegressResult:
    backend: str
    order: list[str]
    keys: list[str]
    recovered: dict[str, float]
    proxy_loss: float
    proxy_psnr: float
    proxy_seconds: float
    restarts: list[dict]
    truth: dict[str, float] | None = None
    error_percent: dict[str, float] | None = None
    render_back_psnr: float | None = None
    refined: dict | None = None
    written: list[Path] = field(default_factory=list)


class _ChainBox:
    """The chain's renderer as :func:`isplab.workflows.proxy.regress.refine_on_renderer` drives it:
    ``render({block.param: value})`` of one raw, counting renders."""

    def __init__(self, renderer: Renderer, config: PipelineConfig, image: Path) -> None:
        self.renderer, self.config, self.image, self.renders = renderer, config, image, 0

    def render(self, flat: dict[str, float]) -> np.ndarray:
        self.renders += 1
        lo, hi = self.config.ranges()
        unit = (np.array([flat[k] for k in self.config.keys]) - lo) / (hi - lo)
        return self.renderer.render(self.image, self.config.values(unit))


def regress_pipeline(opts: RegressOptions) -> RegressResult:
    """Recover every chained parameter from a target through the frozen chain, then render the
    answer back (see the module docstring). Writes ``pipeline_regress.json``,
    ``render_back.tif``, ``render_back.xmp`` and (generated target) ``target.tif``."""
    from isplab.workflows.proxy.regress import REFINE_METHODS, _image, fit_restarts, refine_on_renderer

    if opts.iters < 1 or opts.restarts < 1 or opts.polish < 0 or opts.refine < 0 or not opts.lr > 0:
        raise IsplabError(
            f"--iters and --restarts must be at least 1, --polish and --refine at least 0 and --lr positive, got {opts.iters}, {opts.restarts}, "
            f"{opts.polish}, {opts.refine} and {opts.lr}"
        )
    if opts.refine_method not in REFINE_METHODS:
        raise IsplabError(f"unknown --refine-method {opts.refine_method!r}: expected one of {', '.join(REFINE_METHODS)}")
    device = _device(opts.device)
    config = load_config(opts.config, device=device)
    from isplab.workflows.proxy.builtin import _SPATIAL

    for stage, name in config.params:
        if stage.model is None and name in _SPATIAL.get(stage.name, ()):
            raise IsplabError(
                f"{stage.name}.{name} varies in {config.path} but the builtin op is not differentiable in it: fix it (a number) or use a proxy"
            )
    image = Path(opts.image) if opts.image is not None else config.images[0]
    if not image.is_file():
        raise IsplabError(f"--image {image} does not exist: expected the raw file the target comes from")
    target_given = _image(opts.target) if opts.target is not None else None
    out = prepare_output_dir(opts.output, overwrite=opts.overwrite, names=REGRESS_OUTPUTS, what="pipeline regression folder")
    rng = np.random.default_rng([opts.seed, 1])
    workdir = Path(tempfile.mkdtemp(prefix="isplab-pipeline-"))
    written: list[Path] = []
    try:
        renderer = Renderer(config, workdir)
        x_np, scale = renderer.render_input(image)
        x = _to_tensor(x_np, device)
        truth = None
        if target_given is None:
            truth = config.values(rng.random(len(config.params)))
            target = _to_tensor(renderer.render(image, truth, tif=out / "target.tif"), device)
            written.append(out / "target.tif")
        else:
            target = target_given.to(device)
        if target.shape != x.shape:
            raise IsplabError(f"target {opts.target} is {tuple(target.shape[-2:])} but the render of {image.name} is {tuple(x.shape[-2:])}: expected the same size")

        t0 = time.perf_counter()
        starts = [torch.from_numpy(rng.random((1, len(config.params)))).float().to(device) for _ in range(opts.restarts)]
        fits = fit_restarts(lambda v: chain_forward(config, x, v, scale), target, starts, iters=opts.iters, lr=opts.lr, final_lr=0.01 * opts.lr, polish=opts.polish)
        runs = [{"start": start[0].cpu().numpy(), "unit": u[0].cpu().numpy(), "loss": loss} for start, u, loss in fits]
        seconds = time.perf_counter() - t0
        best = min(runs, key=lambda run: run["loss"])
        values = config.values(best["unit"])
        with torch.no_grad():
            u = torch.tensor(config.unit(values), dtype=torch.float32, device=device)[None]
            proxy_psnr = float(psnr(chain_forward(config, x, u, scale), target))
        back = renderer.render(image, values, tif=out / "render_back.tif", xmp=out / "render_back.xmp")
        written += [out / "render_back.tif", out / "render_back.xmp"]
        render_back = float(psnr(_to_tensor(back, device), target))
        refined = None
        if opts.refine:  # on the renderer from the proxies' answer; its first render is the render-back
            lo, hi = config.ranges()
            refined = refine_on_renderer(_ChainBox(renderer, config, image), target.cpu(), config.unit(values), config.keys, lo, hi,
                                         opts.refine, None if truth is None else config.flat(truth), opts.refine_method)  # fmt: skip
            refined.pop("trace", None)
            best_values = config.values(config.unit([{n: refined["recovered"][f"{s.name}.{n}"] for n in s.varied} for s in config.stages]))
            renderer.render(image, best_values, tif=out / "refined.tif", xmp=out / "refined.xmp")
            written += [out / "refined.tif", out / "refined.xmp"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    keys = config.keys
    recovered = config.flat(values)
    result = RegressResult(
        renderer.name, config.order, keys, recovered, float(best["loss"]), proxy_psnr, seconds,
        [{"start": config.flat(config.values(run["start"])), "recovered": config.flat(config.values(run["unit"])), "loss": run["loss"]} for run in runs],
        render_back_psnr=render_back, refined=refined,
    )  # fmt: skip
    if truth is not None:
        result.truth = config.flat(truth)
        lo, hi = config.ranges()
        result.error_percent = {k: 100.0 * abs(recovered[k] - result.truth[k]) / float(hi[i] - lo[i]) for i, k in enumerate(keys)}
    path = out / "pipeline_regress.json"
    result.written = [*written, path]
    document = {
        "config": str(config.path),
        "backend": result.backend,
        "order": config.order,
        "image": str(image),
        "target": str(opts.target) if opts.target is not None else str(out / "target.tif"),
        "params": config.describe(),
        "iters": opts.iters,
        "lr": opts.lr,
        "polish": opts.polish,
        "restart_count": opts.restarts,
        "seed": opts.seed,
        "recovered": recovered,
        "truth": result.truth,
        "error_percent": result.error_percent,
        "mean_error_percent": None if result.error_percent is None else float(np.mean(list(result.error_percent.values()))),
        "max_error_percent": None if result.error_percent is None else float(np.max(list(result.error_percent.values()))),
        "proxy_loss": result.proxy_loss,
        "proxy_psnr": result.proxy_psnr,
        "render_back_psnr": result.render_back_psnr,
        "proxy_seconds": result.proxy_seconds,
        "restarts": result.restarts,
        "refine": opts.refine,
        "refine_method": opts.refine_method,
        "refined": result.refined,
        "written": [str(p) for p in result.written],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return result

