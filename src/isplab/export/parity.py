"""Numerical parity between a PyTorch model and its exported (ONNX / TFLite) counterpart.

An export is only trusted once the exported file, run by its own runtime, reproduces the PyTorch
model's outputs on the same inputs. :func:`compare_outputs` performs that comparison with
:func:`numpy.isclose` semantics, element by element::

    |candidate - reference| <= atol + rtol * |reference|

and raises :class:`~isplab.errors.ParityError` when any element fails: a failed parity check is
an error, never a warning.

Default tolerances depend on the export precision (see :func:`default_tolerance`):

========  =======  =======  ==========================================================
precision  atol     rtol     why
========  =======  =======  ==========================================================
fp32      1e-4     1e-3     only operator reordering / fused kernels differ
fp16      1e-2     1e-2     float16 keeps ~3 significant digits (weights, ONNX compute)
int8      5e-2     5e-2     8-bit weights and dynamically quantised activations
========  =======  =======  ==========================================================

The quantised tolerances assume outputs of order one (images in ``[0, 1]``); pass explicit
``atol``/``rtol`` for models whose outputs have another scale.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from isplab.errors import IsplabError, ParityError

QUANTIZE_MODES: tuple[str | None, ...] = (None, "fp16", "int8")

_DEFAULT_TOLERANCES: dict[str | None, tuple[float, float]] = {
    None: (1e-4, 1e-3),
    "fp16": (1e-2, 1e-2),
    "int8": (5e-2, 5e-2),
}


@dataclass(frozen=True)
class ParityReport:
    """Outcome of one output-by-output comparison.

    Attributes:
        what: Human-readable description of the comparison (names the exported file).
        n_outputs: Number of output tensors compared.
        max_abs_diff: Largest ``|candidate - reference|`` over all outputs.
        max_rel_diff: Largest ``|candidate - reference| / |reference|`` over the elements whose
            reference is non-zero (0 when all references are zero).
        atol: Absolute tolerance used.
        rtol: Relative tolerance used.
        passed: Whether every element was within ``atol + rtol * |reference|``.
    """

    what: str
    n_outputs: int
    max_abs_diff: float
    max_rel_diff: float
    atol: float
    rtol: float
    passed: bool


@dataclass(frozen=True)
class ExportResult:
    """An exported model file and the parity checks it passed.

    Attributes:
        path: The written model file.
        size_bytes: Its size on disk.
        quantize: Weight precision of the export: ``None`` (float32), ``"fp16"`` or ``"int8"``.
        parity: One report per checked input set; empty when the export ran with ``check=False``.
    """

    path: Path
    size_bytes: int
    quantize: str | None
    parity: tuple[ParityReport, ...]


def default_tolerance(quantize: str | None) -> tuple[float, float]:
    """``(atol, rtol)`` used for an export of precision ``quantize`` (``None``, "fp16", "int8")."""
    check_quantize(quantize)
    return _DEFAULT_TOLERANCES[quantize]


def check_quantize(quantize: str | None) -> None:
    """Raise :class:`IsplabError` unless ``quantize`` is ``None``, ``"fp16"`` or ``"int8"``."""
    if quantize not in QUANTIZE_MODES:
        raise IsplabError(f"quantize must be one of None, 'fp16', 'int8'; got {quantize!r}")


def compare_outputs(
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    atol: float,
    rtol: float,
    what: str,
) -> ParityReport:
    """Compare ``candidate`` outputs with ``reference`` outputs, element by element.

    Args:
        reference: Outputs of the source (PyTorch) model, in order.
        candidate: Outputs of the exported model for the same inputs, in the same order.
        atol: Absolute tolerance.
        rtol: Relative tolerance (relative to ``|reference|``).
        what: Description used in the report and error message, e.g.
            ``"ONNX model 'awb.onnx' vs PyTorch"``.

    Returns:
        A passing :class:`ParityReport`.

    Raises:
        ParityError: If the number of outputs or any shape differs, or any element of any output
            is outside ``atol + rtol * |reference|`` (NaN matches only NaN).
    """
    if len(reference) != len(candidate):
        raise ParityError(f"{what}: expected {len(reference)} outputs, got {len(candidate)}")
    max_abs = max_rel = 0.0
    for i, (ref, cand) in enumerate(zip(reference, candidate)):
        ref = np.asarray(ref, dtype=np.float64)
        cand = np.asarray(cand, dtype=np.float64)
        if ref.shape != cand.shape:
            raise ParityError(
                f"{what}: output {i} has shape {cand.shape}, expected {ref.shape}"
            )
        if ref.size == 0:
            continue
        ok = np.isclose(cand, ref, atol=atol, rtol=rtol, equal_nan=True)
        with np.errstate(invalid="ignore"):
            diff = np.abs(cand - ref)
            # Matching NaNs/infs are no error; a NaN against anything else is an infinite one.
            diff = np.where(np.isnan(diff), np.where(ok, 0.0, np.inf), diff)
            nonzero = ref != 0
            rel = diff[nonzero] / np.abs(ref[nonzero])
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float(rel.max()) if rel.size else 0.0)
        if not ok.all():
            worst = np.unravel_index(int(np.argmax(np.where(ok, -np.inf, diff))), ref.shape)
            raise ParityError(
                f"{what}: output {i} (shape {ref.shape}) exceeds tolerance "
                f"atol={atol:g} + rtol={rtol:g}*|reference| at {int((~ok).sum())} of {ok.size} "
                f"elements; max abs diff {float(diff.max()):.3g}, worst at index "
                f"{tuple(int(k) for k in worst)}: reference {ref[worst]:.6g}, "
                f"exported {cand[worst]:.6g}"
            )
    return ParityReport(
        what=what,
        n_outputs=len(reference),
        max_abs_diff=max_abs,
        max_rel_diff=max_rel,
        atol=atol,
        rtol=rtol,
        passed=True,
    )


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block, then restore every submodule's own mode.

    Submodules are restored one by one (not with ``model.train(was_training)``) because a
    training model may deliberately hold some submodules, e.g. frozen batch norms, in eval mode.
    """
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def torch_outputs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """Run ``model(*inputs)`` in eval mode without gradients; return its outputs as numpy arrays.

    The model may return a tensor or a (nested) tuple/list of tensors; outputs are flattened in
    order, which is the order exporters give them.
    """
    with eval_mode(model), torch.no_grad():
        out = model(*inputs)
    return [t.detach().cpu().numpy() for t in _flatten(out)]


def _flatten(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _flatten(item)]
    raise IsplabError(
        "exportable models must return a tensor or a tuple/list of tensors; "
        f"got {type(out).__name__}"
    )
