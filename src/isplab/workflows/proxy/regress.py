"""Slider regression through a frozen proxy, checked by rendering the answer (``isplab proxy regress``).

1. **Proxy regression** (the seed's): the proxy is frozen; the parameters, as unit values, start
   at a random point of ``[0, 1]^P`` (``seed``) and Adam minimises the MSE between the proxy's
   render of the input and the target for ``iters`` steps, clamping to ``[0, 1]`` (the trained
   range) after each step.
2. **Render-back check**: the recovered values (with the dataset's fixed parameters) are
   rendered by the black box that made the dataset (darktable-cli with an XMP written by
   :mod:`.xmp` via :func:`.darktable.write_job_xmp`, or the builtin backend) from the raw, and
   the render is compared with the target (PSNR, linear values, peak 1).
3. **Derivative-free search** (``search``): scipy's Nelder-Mead on the same unit parameters
   straight on the black box (each function evaluation one render), from the same start,
   stopping after ``search_renders`` renders.
4. **Refinement** (``refine``, off by default): a local search on the black box started at the
   proxy's answer, at most ``refine`` renders: the proxy does the global part of the search, the
   renderer corrects what is left of the proxy's own error. ``refine_method`` ``"lm"`` (the
   default): Levenberg-Marquardt with a forward-difference Jacobian of the render
   (:func:`refine_on_renderer`); ``"nelder-mead"``: the search of 3. with a small simplex (side
   :data:`REFINE_STEP` of the unit range). On darktable's colorbalancergb, from the proxy's answer,
   Levenberg-Marquardt pins down parameters that Nelder-Mead leaves several per cent off for the
   same renders (``benchmarks/proxy.py``). Its best render is reported like the render-back check.

``restarts`` > 1 runs the proxy regression from that many random starts (``seed``, ``seed + 1``,
...) and keeps the one whose proxy render is closest to the target (:func:`fit_restarts`, shared
with ``proxy pipeline regress``).

Parameter errors are ``|recovered - truth|`` in percent of each parameter's trained range,
reported when the truth is known (a dataset sample: ``--sample ID``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from isplab.engine import psnr
from isplab.errors import IsplabError
from isplab.io.paths import prepare_output_dir
from isplab.models.proxy import ProxyUNet
from isplab.workflows.proxy.blocks import get_block
from isplab.workflows.proxy.dataset import ProxyDataset, load_dataset
from isplab.workflows.proxy.evaluate import load_proxy

__all__ = ["RegressOptions", "RegressResult", "regress_params", "fit_unit", "fit_restarts", "best_fit", "BlackBox", "regress", "refine_on_renderer", "renders_to_reach"]

OUTPUTS = ("regress.json", "render_back.tif", "render_back.xmp")
#: Side of the refinement's first simplex, in unit parameter range: a few per cent of the range,
#: the order of the proxy regression's own error on darktable's blocks (``benchmarks/proxy.py``).
REFINE_STEP = 0.05
#: Forward-difference step (unit range) of the Levenberg-Marquardt refinement's Jacobian.
FD_STEP = 0.01
#: Refinement methods on the renderer: Levenberg-Marquardt (the default) or Nelder-Mead.
REFINE_METHODS = ("lm", "nelder-mead")


@dataclass
class RegressOptions:
    """What ``isplab proxy regress`` was asked.

    Attributes:
        block, model: the block and the trained proxy (``model.pt``).
        target, input: TIFFs (linear RGB, as in a dataset); with ``sample`` they default to the
            sample's output and input.
        sample: a sample id of ``dataset`` (default: the model's training set): gives the input,
            target, raw and true parameters.
        dataset: the dataset holding ``sample`` and the raws.
        raw: the raw file to render back from when not using ``sample``.
        iters, lr, polish, seed: the proxy regression (Adam steps and rate, then L-BFGS iterations).
        restarts: proxy regressions from this many random starts; the best fit is kept.
        search, search_renders: run the derivative-free search on the black box, at most this
            many renders.
        refine: renders of the refinement on the black box from the proxy's answer (0: none).
        refine_method: ``"lm"`` (Levenberg-Marquardt) or ``"nelder-mead"`` (:data:`REFINE_METHODS`).
        output: folder for ``regress.json`` and the render-back TIFF/XMP (``None``: nothing kept).
    """

    block: str
    model: Path
    target: Path | None = None
    input: Path | None = None
    sample: str | None = None
    dataset: Path | None = None
    raw: Path | None = None
    iters: int = 100
    lr: float = 0.05
    polish: int = 20
    seed: int = 0
    restarts: int = 1
    search: bool = True
    search_renders: int = 60
    refine: int = 0
    refine_method: str = "lm"
    output: Path | None = None
    overwrite: bool = False
    darktable_cli: str | None = None


@dataclass
class RegressResult:
    params: list[str]
    start: dict[str, float]
    recovered: dict[str, float]
    proxy_seconds: float
    truth: dict[str, float] | None = None
    error_percent: dict[str, float] | None = None
    proxy_psnr: float | None = None  # proxy(input, recovered) vs target
    render_back_psnr: float | None = None
    backend: str | None = None
    search: dict | None = None
    refined: dict | None = None
    written: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def regress_params(
    model: ProxyUNet, x: torch.Tensor, target: torch.Tensor, *, iters: int = 100, lr: float = 0.05, start: torch.Tensor | None = None, seed: int = 0,
    polish: int = 20, restarts: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit unit parameters ``(1, P)`` so that ``model(x, u)`` matches ``target`` (both ``(1, 3, H, W)``):
    ``iters`` Adam steps at ``lr``, then at most ``polish`` L-BFGS iterations (:func:`fit_unit`;
    Adam at a constant rate stops about ``lr`` from the optimum, see ``benchmarks/proxy.py``).
    ``restarts`` > 1 (without ``start``): that many random starts, seeds ``seed``, ``seed + 1``, ...;
    the fit with the lowest MSE is kept (:func:`fit_restarts`).

    Returns:
        ``(start, recovered)`` unit values (the start of the fit kept). The model is left unchanged (frozen).
    """
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if start is None:
        starts = [torch.from_numpy(np.random.default_rng(seed + r).random((1, model.n_params))).float() for r in range(max(1, restarts))]
    else:
        starts = [start]
    start, u, _ = best_fit(fit_restarts(lambda v: model(x, v), target, starts, iters=iters, lr=lr, polish=polish))
    return start, u


def fit_restarts(forward, target: torch.Tensor, starts, **fit) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """:func:`fit_unit` from each of ``starts`` (``(1, P)`` unit tensors; ``fit``: its keyword
    arguments), in order.

    Returns:
        ``(start, u, loss)`` per start; the caller keeps the lowest loss (:func:`best_fit`).
    """
    return [(start, *fit_unit(forward, target, start, **fit)) for start in starts]


def best_fit(runs):
    """The run of :func:`fit_restarts` with the lowest loss (the first one on a tie)."""
    return min(runs, key=lambda run: run[2])


def fit_unit(
    forward, target: torch.Tensor, start: torch.Tensor, *, iters: int = 100, lr: float = 0.05, final_lr: float | None = None, polish: int = 0
) -> tuple[torch.Tensor, float]:
    """The regression loop shared by ``regress`` and ``pipeline regress``: Adam on unit parameters
    ``u`` (a copy of ``start``) minimising ``MSE(forward(u), target)``, clamping ``u`` to [0, 1]
    after every step. ``final_lr``: anneal the rate to it (cosine) over the ``iters`` steps;
    ``None`` keeps ``lr``. ``polish``: then at most this many L-BFGS iterations (strong-Wolfe line
    search, on ``u`` clamped to [0, 1]).

    Returns:
        ``(u, loss)``: the unit values reached and the MSE there.
    """
    u = start.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([u], lr=lr)
    schedule = None if final_lr is None else torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, iters), eta_min=final_lr)
    for _ in range(iters):
        optimizer.zero_grad()
        F.mse_loss(forward(u), target).backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        with torch.no_grad():
            u.clamp_(0.0, 1.0)
    if polish > 0:
        # L-BFGS from where Adam stopped: curvature information finishes ill-conditioned fits
        # (parameters that trade off against each other) that first-order steps crawl along.
        u = u.detach().requires_grad_(True)
        lbfgs = torch.optim.LBFGS([u], lr=1.0, max_iter=polish, history_size=20, line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-15)

        def closure():
            lbfgs.zero_grad()
            loss = F.mse_loss(forward(u.clamp(0.0, 1.0)), target)
            loss.backward()
            return loss

        lbfgs.step(closure)
        with torch.no_grad():
            u.clamp_(0.0, 1.0)
    with torch.no_grad():
        loss = float(F.mse_loss(forward(u), target))
    return u.detach(), loss


class BlackBox:
    """Renders one raw of a dataset with given parameters, as the dataset's backend did."""

    def __init__(self, data: ProxyDataset, raw: Path, workdir: Path, darktable_cli: str | None = None) -> None:
        self.block = get_block(data.block)
        self.backend = data.info.get("backend", "builtin")
        self.raw = Path(raw)
        if not self.raw.is_file():
            raise IsplabError(f"raw file {self.raw} does not exist: the render-back check needs the raw the target came from")
        synthetic = (data.info.get("settings", {}).get("images") or {}).get("kind") == "synthetic"
        self.size = None if synthetic or not data.info.get("size") else tuple(data.info["size"])
        self.fixed = {p["name"]: float(p["range"][0]) for p in data.info["params"] if not p["varied"]}
        self.workdir = Path(workdir)
        self.renders = 0
        self.info = None
        if self.backend == "darktable":
            from isplab.workflows.proxy.darktable import find_darktable
            from isplab.workflows.proxy.generate import _wb_gains

            self.info = find_darktable(darktable_cli)
            self.wb = np.asarray(_wb_gains(self.raw))

    def render_off(self) -> np.ndarray:
        """``(H, W, 3)`` float32 render with the block disabled: the proxy's input."""
        if self.backend == "darktable":
            import tifffile

            from isplab.workflows.proxy.darktable import RenderJob, render, write_job_xmp

            xmp, tif = self.workdir / "off.xmp", self.workdir / "off.tif"
            write_job_xmp(xmp, self.block, None, self.wb)
            render(self.info, RenderJob(self.raw, xmp, tif, self.size), self.workdir / "config")
            return tifffile.imread(tif).astype(np.float32)
        from isplab.workflows.proxy.builtin import render_builtin

        return render_builtin(self.block, self.raw, None, self.size)

    def render(self, values: dict[str, float], tif: Path | None = None, xmp: Path | None = None) -> np.ndarray:
        """``(H, W, 3)`` float32 render with ``values`` (varied parameters; fixed ones added)."""
        full = {**self.fixed, **{k: float(v) for k, v in values.items()}}
        self.renders += 1
        if self.backend == "darktable":
            import tifffile

            from isplab.workflows.proxy.darktable import RenderJob, render, write_job_xmp

            xmp = xmp or self.workdir / f"render_{self.renders}.xmp"
            tif = tif or self.workdir / f"render_{self.renders}.tif"
            write_job_xmp(xmp, self.block, full, self.wb)
            render(self.info, RenderJob(self.raw, xmp, tif, self.size), self.workdir / "config")
            return tifffile.imread(tif).astype(np.float32)
        from isplab.workflows.proxy.builtin import render_builtin

        image = render_builtin(self.block, self.raw, full, self.size)
        if tif is not None:
            import tifffile

            tifffile.imwrite(tif, image)
        return image


def _image(path: Path) -> torch.Tensor:
    from isplab.workflows.proxy.train import _read_tiff

    if not Path(path).is_file():
        raise IsplabError(f"image {path} does not exist")
    return _read_tiff(Path(path))[None]


def _psnr(a: np.ndarray | torch.Tensor, b: torch.Tensor) -> float:
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(a).permute(2, 0, 1)[None]
    if a.shape != b.shape:
        raise IsplabError(f"the render is {tuple(a.shape[-2:])} but the target is {tuple(b.shape[-2:])}: expected the same size")
    return float(psnr(a, b))


def regress(opts: RegressOptions) -> RegressResult:
    """Run the proxy regression, the render-back check and (``opts.search``) the derivative-free
    search (see the module docstring)."""
    if opts.polish < 0:
        raise IsplabError(f"--polish must be at least 0, got {opts.polish}")
    if opts.iters < 1 or opts.search_renders < 1 or opts.restarts < 1:
        raise IsplabError(f"--iters, --search-renders and --restarts must be at least 1, got {opts.iters}, {opts.search_renders} and {opts.restarts}")
    if opts.refine < 0:
        raise IsplabError(f"--refine must be at least 0 (renders), got {opts.refine}")
    if opts.refine_method not in REFINE_METHODS:
        raise IsplabError(f"unknown --refine-method {opts.refine_method!r}: expected one of {', '.join(REFINE_METHODS)}")
    get_block(opts.block)
    model = load_proxy(opts.model, opts.block)
    meta = model.proxy_config["meta"]
    names = list(meta["params"])
    if opts.output is not None:
        prepare_output_dir(opts.output, overwrite=opts.overwrite, names=OUTPUTS, what="regression folder")
    data = None
    truth = None
    raw = opts.raw
    x_path, t_path = opts.input, opts.target
    if opts.sample is not None or opts.raw is None and opts.dataset is not None:
        data = load_dataset(opts.dataset or meta.get("dataset") or "")
        if data.block != opts.block:
            raise IsplabError(f"dataset {data.root} holds {data.block!r} samples, not {opts.block!r}")
        if data.packed is not None:
            raise IsplabError(f"{data.root} is a packed dataset (no DNGs, TIFFs or XMPs): regress needs the original dataset folder "
                              f"({data.packed.get('source')})")  # fmt: skip
    if opts.sample is not None:
        wanted = opts.sample.zfill(6) if opts.sample.isdigit() else opts.sample
        match = [s for s in data.samples if s["id"] == wanted]
        if not match:
            raise IsplabError(f"sample {opts.sample!r} is not in dataset {data.root}: expected an id such as {data.samples[0]['id'] if data.samples else '000000'}")
        s = match[0]
        x_path = x_path or data.path(s["input"])
        t_path = t_path or data.path(s["output"])
        truth = {n: float(s["params"][n]) for n in names}
        image = next(im for im in data.info["images"] if im["id"] == s["image"])
        raw = raw or (data.root / image["file"] if not Path(image["file"]).is_absolute() else Path(image["file"]))
    if t_path is None or x_path is None:
        raise IsplabError("regress needs --target IMAGE and --input IMAGE (the block-off render), or --sample ID of a dataset")
    x, target = _image(x_path), _image(t_path)
    if x.shape != target.shape:
        raise IsplabError(f"{x_path} is {tuple(x.shape[-2:])} but {t_path} is {tuple(target.shape[-2:])}: expected the same size")

    t0 = time.perf_counter()
    start, u = regress_params(model, x, target, iters=opts.iters, lr=opts.lr, seed=opts.seed, polish=opts.polish, restarts=opts.restarts)
    seconds = time.perf_counter() - t0
    values = model.from_unit(u)[0]
    to_dict = lambda v: {n: float(v[i]) for i, n in enumerate(names)}  # noqa: E731
    result = RegressResult(names, to_dict(model.from_unit(start)[0]), to_dict(values), seconds, truth=truth)
    with torch.no_grad():
        result.proxy_psnr = float(psnr(model(x, u), target))
    lo, hi = model.low.numpy(), model.high.numpy()
    if truth is not None:
        result.error_percent = _errors(result.recovered, truth, names, lo, hi)

    if raw is not None:
        if data is None:
            data = load_dataset(opts.dataset or meta.get("dataset") or "")
        keep = Path(opts.output) if opts.output is not None else None
        workdir = Path(tempfile.mkdtemp(prefix="isplab-regress-"))
        try:
            box = BlackBox(data, raw, workdir, opts.darktable_cli)
            result.backend = box.backend if box.info is None else f"darktable {box.info.version}"
            tif = keep / "render_back.tif" if keep else None
            xmp = (keep / "render_back.xmp" if keep else None) if box.backend == "darktable" else None
            result.render_back_psnr = _psnr(box.render(result.recovered, tif, xmp), target)
            if keep:
                result.written += [str(p) for p in (tif, xmp) if p is not None]
            if opts.search:
                result.search = _search(box, target, start[0].numpy(), names, lo, hi, opts.search_renders, truth)
            if opts.refine:
                result.refined = refine_on_renderer(box, target, u[0].numpy(), names, lo, hi, opts.refine, truth, opts.refine_method)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    if opts.output is not None:
        path = Path(opts.output) / "regress.json"
        path.write_text(json.dumps(result.as_dict() | {"written": result.written + [str(path)]}, indent=2) + "\n")
        result.written.append(str(path))
    return result


def _errors(values: dict, truth: dict, names, lo, hi) -> dict[str, float]:
    return {n: 100.0 * abs(values[n] - truth[n]) / float(hi[i] - lo[i]) for i, n in enumerate(names)}


def _search(box: BlackBox, target: torch.Tensor, start: np.ndarray, names, lo, hi, budget: int, truth, step: float = 0.25) -> dict:
    """Nelder-Mead on unit parameters straight on the black box, ``budget`` renders at most, from a
    simplex of side ``step`` at ``start`` (:func:`_simplex`); the best render seen is the answer.
    With ``truth``, ``trace`` lists ``[renders, mean error %]`` at every render that improved on the
    best so far (how many renders the search needed to reach a given error)."""
    from scipy.optimize import minimize

    best = {"loss": np.inf, "u": start.copy()}
    first = box.renders
    trace: list[list[float]] = []

    def objective(u: np.ndarray) -> float:
        u = np.clip(u, 0.0, 1.0)
        values = {n: float(lo[i] + u[i] * (hi[i] - lo[i])) for i, n in enumerate(names)}
        image = torch.from_numpy(box.render(values)).permute(2, 0, 1)[None]
        loss = float(F.mse_loss(image, target))
        if loss < best["loss"]:
            best.update(loss=loss, u=u.copy())
            if truth is not None:
                trace.append([box.renders - first, float(np.mean(list(_errors(values, truth, names, lo, hi).values())))])
        return loss

    t0 = time.perf_counter()
    minimize(objective, start.astype(np.float64), method="Nelder-Mead", options={"maxfev": budget, "xatol": 1e-4, "fatol": 1e-12, "initial_simplex": _simplex(start, step)})
    seconds = time.perf_counter() - t0
    u = best["u"]
    values = {n: float(lo[i] + u[i] * (hi[i] - lo[i])) for i, n in enumerate(names)}
    mse = best["loss"]
    out = {"method": "Nelder-Mead", "renders": box.renders - first, "seconds": seconds, "recovered": values,
           "psnr": float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))}  # fmt: skip
    if truth is not None:
        out["error_percent"] = _errors(values, truth, names, lo, hi)
        out["trace"] = trace
    return out


def _levenberg_marquardt(box, target: torch.Tensor, start: np.ndarray, names, lo, hi, budget: int, truth, step: float = FD_STEP) -> dict:
    """Levenberg-Marquardt on unit parameters straight on the black box, ``budget`` renders at most,
    from ``start``: the Jacobian of the render by forward differences (``step`` of the unit range,
    taken inward at a bound; one render per parameter), then damped Gauss-Newton steps
    ``(JᵀJ + λ diag(JᵀJ)) δ = -Jᵀr`` projected onto ``[0, 1]`` (one render each; λ ÷ 10 after a step
    that lowers the squared error, × 10 and retry after one that does not). Stops when the budget
    cannot pay for another Jacobian and step, when a step changes no unit value by more than 1e-7,
    or at an exact match. The best render seen is the answer; the result has :func:`_search`'s keys
    (``trace`` too). Holds the Jacobian: parameters x pixels x 3 float32 values."""
    best = {"loss": np.inf, "u": start.astype(np.float64).copy()}
    first = box.renders
    trace: list[list[float]] = []
    goal = target[0].permute(1, 2, 0).numpy().astype(np.float32).ravel()

    def residual(u: np.ndarray) -> tuple[np.ndarray, float]:
        values = {n: float(lo[i] + u[i] * (hi[i] - lo[i])) for i, n in enumerate(names)}
        r = box.render(values).astype(np.float32).ravel()
        if r.shape != goal.shape:
            raise IsplabError(f"the render has {r.size} values but the target {goal.size}: expected the same size")
        r -= goal
        loss = float(np.dot(r.astype(np.float64), r) / r.size)
        if loss < best["loss"]:
            best.update(loss=loss, u=u.copy())
            if truth is not None:
                trace.append([box.renders - first, float(np.mean(list(_errors(values, truth, names, lo, hi).values())))])
        return r, loss

    t0 = time.perf_counter()
    u = np.clip(start.astype(np.float64), 0.0, 1.0)
    damping = 1e-3
    r, loss = residual(u)
    n = len(u)
    while loss > 0 and box.renders - first + n + 1 <= budget:
        jac = np.empty((n, r.size), dtype=np.float32)
        for i in range(n):
            h = step if u[i] + step <= 1.0 else -step
            v = u.copy()
            v[i] += h
            jac[i] = (residual(v)[0] - r) / h
        a = (jac.astype(np.float64) @ jac.T.astype(np.float64)) / r.size
        g = (jac.astype(np.float64) @ r.astype(np.float64)) / r.size
        scale = np.diag(a) + 1e-12 * max(float(np.diag(a).max()), 1e-30)
        moved = False
        while box.renders - first < budget:
            delta = -np.linalg.solve(a + damping * np.diag(scale), g)
            v = np.clip(u + delta, 0.0, 1.0)
            if np.abs(v - u).max() <= 1e-7:
                break
            rv, lv = residual(v)
            if lv < loss:
                u, r, loss, moved = v, rv, lv, True
                damping = max(damping / 10.0, 1e-9)
                break
            damping *= 10.0
        if not moved:
            break
    seconds = time.perf_counter() - t0
    values = {n: float(lo[i] + best["u"][i] * (hi[i] - lo[i])) for i, n in enumerate(names)}
    mse = best["loss"]
    out = {"method": "Levenberg-Marquardt", "renders": box.renders - first, "seconds": seconds, "recovered": values,
           "psnr": float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))}  # fmt: skip
    if truth is not None:
        out["error_percent"] = _errors(values, truth, names, lo, hi)
        out["trace"] = trace
    return out


def refine_on_renderer(box, target: torch.Tensor, start: np.ndarray, names, lo, hi, budget: int, truth=None, method: str = "lm") -> dict:
    """The refinement from the proxy's answer ``start`` (unit values) on the black box itself, at most
    ``budget`` renders: ``"lm"`` (:func:`_levenberg_marquardt`) or ``"nelder-mead"`` (:func:`_search`
    with a simplex of side :data:`REFINE_STEP`)."""
    if method not in REFINE_METHODS:
        raise IsplabError(f"unknown refinement method {method!r}: expected one of {', '.join(REFINE_METHODS)}")
    if method == "lm":
        return _levenberg_marquardt(box, target, start, names, lo, hi, budget, truth)
    return _search(box, target, start, names, lo, hi, budget, truth, step=REFINE_STEP)


def renders_to_reach(trace: list[list[float]], error_pct: float) -> int | None:
    """The renders a search's ``trace`` (:func:`_search`) needed for its best render's mean
    parameter error to be at most ``error_pct``; ``None`` if it never got there."""
    return next((int(renders) for renders, error in trace if error <= error_pct), None)


def _simplex(start: np.ndarray, step: float = 0.25) -> np.ndarray:
    """A simplex of side ``step`` (unit range) around ``start``, stepping inward from the bounds."""
    points = [start.astype(np.float64)]
    for i in range(len(start)):
        p = start.astype(np.float64).copy()
        p[i] += step if p[i] <= 0.5 else -step
        points.append(p)
    return np.array(points)
