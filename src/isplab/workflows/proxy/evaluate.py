"""Use and score trained proxies: :func:`load_proxy`, :func:`predict` (the one inference function)
and :func:`evaluate_proxy` (``isplab proxy test``, and the end of ``isplab proxy train``).

Scores are PSNR (peak 1.0 = the raw white level, on the linear unclipped values both backends
write) and SSIM (same data range) of the proxy's output against the rendered output, per group of
held-out samples: **held-out images** (the dataset's validation images, parameters outside the
held-out bands), **held-out parameters** (training images, a parameter value inside a band the
training never saw) and **both**. The report lists the worst samples and shows a grid per sample
(input / darktable / proxy / error x 10, displayed with the sRGB curve).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from isplab.engine import Report, psnr, ssim
from isplab.errors import IsplabError
from isplab.io.paths import prepare_output_dir
from isplab.models.proxy import ProxyUNet, load_proxy_model
from isplab.workflows.proxy.dataset import ProxyDataset, load_dataset

__all__ = ["load_proxy", "predict", "to_display", "EvalResult", "evaluate_proxy", "test_proxy", "REPORT_FILES"]

#: What :func:`evaluate_proxy` writes into its folder.
REPORT_FILES = ("report.html", "report_grid.png", "report_curves.png", "report_metrics.json")
GROUPS = (("val_images", "held-out images"), ("val_params", "held-out parameters"), ("val_both", "held-out images and parameters"))
ERROR_GAIN = 10.0


def load_proxy(path: str | Path, block: str | None = None) -> ProxyUNet:
    """A trained proxy (``model.pt`` of ``isplab proxy train``), checked to model ``block``.

    Raises:
        IsplabError: not a proxy model file, or a proxy of another block.
    """
    model = load_proxy_model(path)
    meta = model.proxy_config.get("meta") or {}
    if "block" not in meta or "params" not in meta:
        raise IsplabError(f"'{path}' is a proxy network without its block description: expected a model.pt of isplab proxy train")
    if block is not None and meta["block"] != block:
        raise IsplabError(f"'{path}' is a proxy of block {meta['block']!r}, not {block!r}: expected a {block} proxy")
    return model


def predict(model: ProxyUNet, x: torch.Tensor, values: dict[str, float] | torch.Tensor, *, unit: bool = False) -> torch.Tensor:
    """The proxy's render of ``x`` ``(B, 3, H, W)`` (linear RGB, the block's input).

    ``values``: the parameters by name (real units), or a ``(B, P)`` tensor in the model's
    parameter order, real units, or unit values with ``unit=True``.
    """
    params = model.proxy_config["meta"]["params"]
    if isinstance(values, dict):
        missing = [n for n in params if n not in values]
        if missing:
            raise IsplabError(f"missing parameter(s) {', '.join(missing)}: the proxy takes {', '.join(params)}")
        values = torch.tensor([[float(values[n]) for n in params]], dtype=x.dtype, device=x.device).expand(x.shape[0], -1)
    u = values if unit else model.to_unit(values)
    return model(x, u)


def to_display(image: torch.Tensor) -> torch.Tensor:
    """Linear RGB -> sRGB-encoded [0, 1] for viewing (clipped)."""
    x = image.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp(min=1e-8).pow(1 / 2.4) - 0.055)


@dataclass
class EvalResult:
    """Scores per group (``{"n", "psnr", "ssim", "psnr_display"}``), every scored sample, the report's path.

    ``psnr`` and ``ssim`` compare the linear float outputs with peak 1 (values above 1, e.g. after
    +4 EV, count in full); ``psnr_display`` compares what a viewer sees, both images through
    :func:`to_display` (clipped to [0, 1], sRGB-encoded)."""

    groups: dict[str, dict] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)
    report: Path | None = None


def evaluate_proxy(
    data: ProxyDataset,
    model: ProxyUNet,
    out_dir: str | Path,
    *,
    splits=None,
    holdout_params: float = 0.1,
    title: str = "Proxy test",
    run_dir: str | Path | None = None,
    max_per_group: int | None = 64,
    grid_rows: int = 4,
) -> EvalResult:
    """Score ``model`` on ``data``'s held-out groups and write the report into ``out_dir``.

    ``splits``: a :class:`~isplab.workflows.proxy.train.Splits` (default: made from ``data`` and
    ``holdout_params``, as training does). ``run_dir``: a training run whose curves to plot.
    """
    from isplab.workflows.proxy.train import ProxyImageDataset, _Samples, make_splits

    meta = model.proxy_config["meta"]
    if meta["block"] != data.block:
        raise IsplabError(f"the model is a proxy of {meta['block']!r} but dataset {data.root} holds {data.block!r}")
    missing = [n for n in meta["params"] if n not in data.varied]
    if missing:
        raise IsplabError(f"dataset {data.root} does not vary {', '.join(missing)}, which the proxy takes: expected a dataset like its training set")
    if splits is None:
        splits = make_splits(data, meta["params"], holdout_params)
    out_dir = Path(out_dir)
    result = EvalResult()
    shown: list[tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    model = model.eval()
    with torch.no_grad():
        for key, label in GROUPS:
            samples = getattr(splits, key)[:max_per_group] if max_per_group else getattr(splits, key)
            source = _Samples(data, samples, meta["params"], ranges=model.proxy_config["ranges"])
            scores = []
            for i, (x, y, u) in enumerate(ProxyImageDataset(source)):
                pred = model(x[None], u[None])
                p, s = float(psnr(pred, y[None])), float(ssim(pred, y[None]))
                d = float(psnr(to_display(pred), to_display(y[None])))
                record = {"group": label, "id": samples[i]["id"], "image": samples[i]["image"], "psnr": p, "ssim": s, "psnr_display": d}
                record.update({n: float(samples[i]["params"][n]) for n in meta["params"]})
                scores.append(record)
                if i < grid_rows and len(shown) < grid_rows:
                    shown.append((record, x, y, pred[0]))
            result.samples.extend(scores)
            if scores:
                result.groups[label] = {
                    "n": len(scores),
                    "psnr": float(np.mean([r["psnr"] for r in scores])),
                    "ssim": float(np.mean([r["ssim"] for r in scores])),
                    "psnr_display": float(np.mean([r["psnr_display"] for r in scores])),
                }
    if not result.samples:
        raise IsplabError(f"dataset {data.root} has no held-out samples to score (every image is a training image)")

    report = Report(title, out_dir)
    report.add_text(
        f"Proxy of darktable's {meta['block']} block, parameters {', '.join(meta['params'])}; dataset {data.root} "
        f"({data.info.get('backend')} backend). PSNR and SSIM on linear values, peak 1.0."
    )
    report.add_table(
        [{"group": k, **v} for k, v in result.groups.items()], ["group", "n", "psnr", "ssim", "psnr_display"], caption="Scores per held-out group (psnr, ssim: linear values, peak 1; psnr_display: clipped sRGB)"
    )
    worst = sorted(result.samples, key=lambda r: r["psnr"])[:5]
    report.add_table(worst, ["group", "id", "image", *meta["params"], "psnr", "ssim"], caption="Worst samples")
    report.add_image(_grid(shown), "input / darktable / proxy / |error| x 10 (sRGB display)", name="report_grid")
    if run_dir is not None:
        try:
            from isplab.engine import plot_curves

            report.add_figure(plot_curves(run_dir, ["train_loss", "val_psnr"], logy=False), "training curves", name="report_curves")
        except IsplabError:
            pass  # too short a run to have logged both
    (out_dir / "report_metrics.json").write_text(json.dumps({"groups": result.groups, "samples": result.samples}, indent=2) + "\n")
    result.report = report.write()
    return result


def _grid(rows: list[tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]]) -> np.ndarray:
    """``(H, W, 3)`` float image: one row per sample, columns input / target / proxy / error."""
    tiles = []
    for _, x, y, pred in rows:
        error = (pred - y).abs() * ERROR_GAIN
        cells = [to_display(x), to_display(y), to_display(pred), error.clamp(0, 1)]
        pad = torch.ones(3, x.shape[1], 2)
        row = []
        for c in cells:
            row += [c, pad]
        tiles.append(torch.cat(row[:-1], dim=2))
    width = max(t.shape[2] for t in tiles)
    tiles = [torch.nn.functional.pad(t, (0, width - t.shape[2]), value=1.0) for t in tiles]
    spaced = []
    for t in tiles:
        spaced += [t, torch.ones(3, 2, width)]
    return torch.cat(spaced[:-1], dim=1).permute(1, 2, 0).numpy()


def test_proxy(dataset: str | Path, model_path: str | Path, out_dir: str | Path, *, overwrite: bool = False, holdout_params: float | None = None) -> EvalResult:
    """``isplab proxy test DATASET --model M -o OUT``: score a trained proxy on a dataset.

    The held-out band is the training run's (``config.json`` beside the model), else 0.1.
    """
    model_path = Path(model_path)
    model = load_proxy(model_path)
    data = load_dataset(dataset)
    if model.proxy_config["meta"]["block"] != data.block:
        raise IsplabError(
            f"'{model_path}' is a proxy of block {model.proxy_config['meta']['block']!r} but dataset {data.root} holds {data.block!r}: expected a proxy of {data.block}"
        )
    if holdout_params is None:
        holdout_params = 0.1
        config = model_path.parent / "config.json"
        if config.is_file():
            try:
                holdout_params = float(json.loads(config.read_text()).get("holdout_params", 0.1))
            except (ValueError, TypeError, AttributeError):
                pass
    prepare_output_dir(out_dir, overwrite=overwrite, names=REPORT_FILES, what="report folder")
    return evaluate_proxy(data, model, out_dir, holdout_params=holdout_params, title=f"Proxy test: {data.block}")


test_proxy.__test__ = False  # not a pytest test
