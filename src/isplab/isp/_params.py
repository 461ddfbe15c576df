"""Shared argument handling for the ISP ops: image shape checks, per-sample parameters, CFA maps.

Private to :mod:`isplab.isp`; the public ops call these so every op reports shape errors the same way.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence

import torch

from isplab.errors import IsplabError


def check_image(x: torch.Tensor, channels: int | None, name: str = "image") -> torch.Tensor:
    """Raise unless ``x`` is a floating ``(B, channels, H, W)`` tensor (any channel count if None)."""
    if not isinstance(x, torch.Tensor):
        raise IsplabError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or (channels is not None and x.shape[1] != channels):
        expected = f"(B, {channels}, H, W)" if channels is not None else "(B, C, H, W)"
        raise IsplabError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise IsplabError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def per_sample(value, like: torch.Tensor, shape: Sequence[int], name: str) -> torch.Tensor:
    """Convert a parameter shared by the batch or given per sample to ``(B', *shape)``, B' in {1, B}.

    Args:
        value: number, sequence, array or tensor of shape ``shape`` (shared) or ``(B, *shape)``.
        like: the ``(B, ...)`` tensor the parameter applies to; fixes B, dtype and device.
        shape: the parameter's per-sample shape, e.g. ``(3,)`` for RGB gains or ``()`` for a scalar.
        name: the argument name used in error messages.

    Tensors are cast with differentiable conversions (none when dtype and device already match),
    so gradients reach learned parameters.
    """
    shape = tuple(shape)
    tensor = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    batch = like.shape[0]
    if tuple(tensor.shape) == shape:
        return tensor.unsqueeze(0)
    if tuple(tensor.shape) == (batch, *shape):
        return tensor
    shared = str(shape) if shape else "() (a scalar)"
    raise IsplabError(
        f"{name} must have shape {shared} or {(batch, *shape)} (one per sample of the batch of {batch}), "
        f"got {tuple(tensor.shape)}"
    )


def cfa_map(tile_values: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Tile per-position values of the 2x2 CFA tile over an image.

    Args:
        tile_values: ``(B', 4)`` values in the tile's row-major order.

    Returns:
        ``(B', 1, height, width)``; odd sizes are cropped from the repeated tile.
    """
    tile = tile_values.reshape(-1, 1, 2, 2)
    return tile.repeat(1, 1, (height + 1) // 2, (width + 1) // 2)[..., :height, :width]


def as_float_tensor(value) -> torch.Tensor:
    """``value`` itself if it is a floating tensor, else a float64 tensor of it (keeps precision)."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value
    return torch.as_tensor(value, dtype=torch.float64)


def eager_inplace_ok(*tensors: torch.Tensor) -> bool:
    """True when ops may work in place on buffers they own: no autograd graph is being recorded for
    ``tensors`` and nothing is tracing or exporting the computation (where in-place ops and Python
    loops would be baked into the graph)."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return False
    return not (torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors))


def scratch_tensor(scratch: dict | None, key, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised buffer of ``shape`` (``like``'s dtype and device), reused from ``scratch``.

    Chunked work reuses its temporaries from chunk to chunk instead of allocating them each time
    (fresh allocations of a few MB are fresh pages: page faults cost as much as the arithmetic).
    Live buffers need distinct keys. ``scratch=None`` allocates.
    """
    shape = tuple(shape)
    if scratch is None:
        return like.new_empty(shape)
    buffer = scratch.get(key)
    if buffer is None or tuple(buffer.shape) != shape or buffer.dtype != like.dtype or buffer.device != like.device:
        buffer = scratch[key] = like.new_empty(shape)
    return buffer


def run_chunks(work: Callable[[int, dict], None], items: range) -> None:
    """Call ``work(item, scratch)`` for every item, on ``torch.get_num_threads()`` threads that each
    run their ops single-threaded (torch ops release the GIL); ``scratch`` is a dict per thread
    for :func:`scratch_tensor`, dropped at the end.

    For per-chunk work on a large image: many small ops, each on an OpenMP team of its own, would
    spend their time in barriers (far more so when other processes share the cores); whole chunks
    per thread scale instead. The first exception is re-raised here.
    """
    threads = min(torch.get_num_threads(), len(items))
    if threads <= 1:
        scratch: dict = {}
        for item in items:
            work(item, scratch)
        return
    pending: queue.SimpleQueue[int] = queue.SimpleQueue()
    for item in items:
        pending.put(item)
    errors: list[BaseException] = []

    # Grad and inference modes are per thread: the workers take the caller's.
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def worker() -> None:
        torch.set_num_threads(1)  # this thread's OpenMP/MKL team size (and the default of new threads: restored below)
        scratch: dict = {}
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                while not errors:
                    try:
                        item = pending.get_nowait()
                    except queue.Empty:
                        return
                    work(item, scratch)
        except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(e)

    original = torch.get_num_threads()
    pool = [threading.Thread(target=worker, name=f"isplab-isp-{i}", daemon=True) for i in range(threads)]
    try:
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    finally:
        torch.set_num_threads(original)
    if errors:
        raise errors[0]
