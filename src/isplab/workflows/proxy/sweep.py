"""Sweep one parameter across its trained range: proxy beside the renderer (``isplab proxy sweep``).

Frame ``k`` of ``steps`` sets ``PARAM`` to ``low + k (high - low) / (steps - 1)`` (the proxy's
trained range), the other parameters to the sample's values (``--sample``) or the middle of their
ranges, and shows the proxy's output (left) beside the renderer's (right: darktable-cli or the
builtin ops, whichever made the dataset; ``render=False`` shows the proxy only), both with the sRGB
curve. Frames are kept as ``OUT/frames/frame_0000.png ...`` and encoded with the ffmpeg that
imageio-ffmpeg bundles into ``OUT/sweep.mp4`` (H.264) and ``OUT/sweep.gif``; ``OUT/sweep.json``
holds each frame's value and the proxy's PSNR against the render.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from isplab.engine import psnr, save_png
from isplab.errors import IsplabError
from isplab.io.paths import prepare_output_dir
from isplab.workflows.proxy.dataset import load_dataset
from isplab.workflows.proxy.evaluate import load_proxy, to_display
from isplab.workflows.proxy.regress import BlackBox, _image

__all__ = ["SweepOptions", "SweepResult", "sweep", "encode_video"]

OUTPUTS = ("frames", "sweep.mp4", "sweep.gif", "sweep.json")


@dataclass
class SweepOptions:
    block: str
    param: str
    model: Path
    output: Path
    image: Path | None = None  # a raw of the dataset's kind (DNG)
    sample: str | None = None
    dataset: Path | None = None
    steps: int = 100
    fps: int = 25
    render: bool = True
    overwrite: bool = False
    darktable_cli: str | None = None


@dataclass
class SweepResult:
    values: list[float] = field(default_factory=list)
    psnr: list[float | None] = field(default_factory=list)
    frames: list[Path] = field(default_factory=list)
    mp4: Path | None = None
    gif: Path | None = None


def encode_video(frames_pattern: Path, fps: int, mp4: Path, gif: Path) -> None:
    """Encode numbered PNG frames (``frame_%04d.png``) to H.264 MP4 and GIF with imageio-ffmpeg's ffmpeg.

    Raises:
        IsplabError: imageio-ffmpeg is missing, or ffmpeg fails (its last message quoted).
    """
    try:
        import imageio_ffmpeg
    except ImportError:
        raise IsplabError("imageio-ffmpeg is not installed (pip install imageio-ffmpeg): it carries the ffmpeg that encodes sweeps") from None
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    jobs = [
        [exe, "-y", "-loglevel", "error", "-framerate", str(fps), "-i", str(frames_pattern), "-vf",
         "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "15", str(mp4)],
        [exe, "-y", "-loglevel", "error", "-framerate", str(fps), "-i", str(frames_pattern), "-vf",
         "split[a][b];[a]palettegen[p];[b][p]paletteuse", "-loop", "0", str(gif)],
    ]  # fmt: skip
    for cmd in jobs:
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            said = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise IsplabError(f"ffmpeg could not write {cmd[-1]}: {said}")


def sweep(opts: SweepOptions) -> SweepResult:
    """Render the sweep (see the module docstring)."""
    if opts.steps < 2 or opts.fps < 1:
        raise IsplabError(f"--steps must be at least 2 and --fps at least 1, got {opts.steps} and {opts.fps}")
    model = load_proxy(opts.model, opts.block)
    meta = model.proxy_config["meta"]
    names = list(meta["params"])
    if opts.param not in names:
        raise IsplabError(f"the proxy {opts.model} takes {', '.join(names)}: {opts.param!r} is not one of them")
    if opts.image is None and opts.sample is None:
        raise IsplabError("sweep needs --image RAW (a DNG) or --sample ID of the model's dataset")
    out = prepare_output_dir(opts.output, overwrite=opts.overwrite, names=OUTPUTS, what="sweep folder")
    data = load_dataset(opts.dataset or meta.get("dataset") or "")
    if data.block != opts.block:
        raise IsplabError(f"dataset {data.root} holds {data.block!r} samples, not {opts.block!r}")
    if data.packed is not None:
        raise IsplabError(f"{data.root} is a packed dataset (no DNGs): sweep needs the original dataset folder ({data.packed.get('source')})")
    lo, hi = model.low.numpy(), model.high.numpy()
    base = {n: float((lo[i] + hi[i]) / 2) for i, n in enumerate(names)}
    raw, x = opts.image, None
    if opts.sample is not None:
        wanted = opts.sample.zfill(6) if opts.sample.isdigit() else opts.sample
        match = [s for s in data.samples if s["id"] == wanted]
        if not match:
            raise IsplabError(f"sample {opts.sample!r} is not in dataset {data.root}")
        s = match[0]
        base = {n: float(s["params"][n]) for n in names}
        x = _image(data.path(s["input"]))
        file = next(im["file"] for im in data.info["images"] if im["id"] == s["image"])
        raw = raw or (Path(file) if Path(file).is_absolute() else data.root / file)
    workdir = Path(tempfile.mkdtemp(prefix="isplab-sweep-"))
    result = SweepResult()
    try:
        box = BlackBox(data, Path(raw), workdir, opts.darktable_cli)
        if x is None or opts.image is not None:
            x = torch.from_numpy(box.render_off()).permute(2, 0, 1)[None]
        for folder in (out / "frames",):
            if folder.exists():
                shutil.rmtree(folder)  # only with --overwrite (checked above)
        (out / "frames").mkdir(parents=True)
        k = names.index(opts.param)
        for step, value in enumerate(np.linspace(lo[k], hi[k], opts.steps)):
            values = {**base, opts.param: float(value)}
            unit = model.to_unit(torch.tensor([[values[n] for n in names]], dtype=torch.float32))
            with torch.no_grad():
                pred = model(x, unit)
            cells = [to_display(pred[0])]
            score = None
            if opts.render:
                target = torch.from_numpy(box.render(values)).permute(2, 0, 1)[None]
                if target.shape != pred.shape:
                    raise IsplabError(f"the render of {raw} is {tuple(target.shape[-2:])} but the proxy's input is {tuple(pred.shape[-2:])}")
                score = float(psnr(pred, target))
                cells += [torch.ones(3, x.shape[-2], 4), to_display(target[0])]
            frame = torch.cat(cells, dim=2)
            result.frames.append(save_png(out / "frames" / f"frame_{step:04d}.png", frame))
            result.values.append(float(value))
            result.psnr.append(score)
        result.mp4, result.gif = out / "sweep.mp4", out / "sweep.gif"
        encode_video(out / "frames" / "frame_%04d.png", opts.fps, result.mp4, result.gif)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    (out / "sweep.json").write_text(json.dumps({
        "block": opts.block, "param": opts.param, "fixed": {n: v for n, v in base.items() if n != opts.param},
        "renderer": (box.backend if box.info is None else f"darktable {box.info.version}") if opts.render else None,
        "values": result.values, "psnr": result.psnr, "fps": opts.fps,
    }, indent=2) + "\n")  # fmt: skip
    return result
