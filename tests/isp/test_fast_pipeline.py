"""The fast classical pipeline against the full-resolution formulation it replaced.

Demosaicing now runs as per-phase sums on packed (4, H/2, W/2) planes, with white balance, the
colour matrix and the sRGB curve fused around it, chunked and threaded on the CPU when no gradient
is needed. The references below are the previous implementation, kept here verbatim in substance:
5x5 (3x3) kernels convolved over every pixel of the reflect-padded mosaic, then a gather picks each
site's source; white balance and levels through full-size CFA maps. Both paths of the new code
(out of place for autograd, in place and chunked without it) must agree with them.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from isplab.isp._params import run_chunks
from isplab.isp.bayer import PATTERNS, channel_index, tile_to_planes
from isplab.isp.gamma import encode_srgb_fast_, linear_to_srgb, linear_to_srgb_
from isplab.isp.levels import normalize_mosaic
from isplab.isp.pipeline import render
from isplab.isp.tone import smoothstep_tone, smoothstep_tone_

demosaic_module = importlib.import_module("isplab.isp.demosaic")
demosaic = demosaic_module.demosaic

RNG = np.random.default_rng(13)

# ---------------------------------------------------------------- the previous implementation --
_KERNELS = {
    "bilinear": (
        [
            [[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]],
            [[0.0, 0.0, 0.0], [2.0, 0.0, 2.0], [0.0, 0.0, 0.0]],
            [[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0]],
            [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]],
        ],
        4.0,
    ),
    "malvar": (
        [
            [[0, 0, -1, 0, 0], [0, 0, 2, 0, 0], [-1, 2, 4, 2, -1], [0, 0, 2, 0, 0], [0, 0, -1, 0, 0]],
            [[0, 0, 0.5, 0, 0], [0, -1, 0, -1, 0], [-1, 4, 5, 4, -1], [0, -1, 0, -1, 0], [0, 0, 0.5, 0, 0]],
            [[0, 0, -1, 0, 0], [0, -1, 4, -1, 0], [0.5, 0, 5, 0, 0.5], [0, -1, 4, -1, 0], [0, 0, -1, 0, 0]],
            [[0, 0, -1.5, 0, 0], [0, 2, 0, 2, 0], [-1.5, 0, 6, 0, -1.5], [0, 2, 0, 2, 0], [0, 0, -1.5, 0, 0]],
        ],
        8.0,
    ),
}


def _cfa_map(tile: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return tile.reshape(-1, 1, 2, 2).repeat(1, 1, (height + 1) // 2, (width + 1) // 2)[..., :height, :width]


def _sources(pattern: str) -> list[list[int]]:
    """Per output channel, the source at each tile position: 0 the mosaic, 1 G at R/B, 2 row, 3 column, 4 R<->B."""
    red_row = pattern.index("R") // 2
    table: list[list[int]] = [[], [], []]
    for position, colour in enumerate(pattern):
        on_red_row = position // 2 == red_row
        if colour == "G":
            table[0].append(2 if on_red_row else 3)
            table[1].append(0)
            table[2].append(3 if on_red_row else 2)
        else:
            own, other = (0, 2) if colour == "R" else (2, 0)
            table[own].append(0)
            table[1].append(1)
            table[other].append(4)
    return table


def reference_demosaic(mosaic: torch.Tensor, pattern: str, method: str) -> torch.Tensor:
    kernels, scale = _KERNELS[method]
    pad = len(kernels[0]) // 2
    weights = torch.tensor(kernels, dtype=mosaic.dtype).unsqueeze(1) / scale
    filtered = F.conv2d(F.pad(mosaic, (pad,) * 4, mode="reflect"), weights)
    sources = torch.cat([mosaic, filtered], dim=1)
    index = _cfa_map(torch.tensor(_sources(pattern)), *mosaic.shape[-2:]).transpose(0, 1)
    return torch.gather(sources, 1, index.expand(mosaic.shape[0], -1, -1, -1))


def reference_render(raw, pattern, gains, ccm, method, tone, clip):
    gains, ccm = torch.as_tensor(gains, dtype=raw.dtype), torch.as_tensor(ccm, dtype=raw.dtype)
    gains, ccm = gains.reshape(-1, 3), ccm.reshape(-1, 3, 3)
    x = raw * _cfa_map(gains[:, channel_index(pattern)], *raw.shape[-2:])
    x = x.clamp(0, 1) if clip else x
    x = torch.einsum("bck,bkhw->bchw", ccm.expand(raw.shape[0], 3, 3), reference_demosaic(x, pattern, method))
    x = x.clamp(0, 1) if clip else x
    x = torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)
    if tone:
        x = x.clamp(0, 1)
        x = 3.0 * x**2 - 2.0 * x**3
    return x


def reference_normalize(mosaic, black, white, pattern, clip):
    x = mosaic.float()
    black = torch.as_tensor(black, dtype=x.dtype).reshape(-1, 4)[:, tile_to_planes(pattern)]
    black_map = _cfa_map(black, *x.shape[-2:])
    out = (x - black_map) / (torch.as_tensor(white, dtype=x.dtype).reshape(-1, 1, 1, 1) - black_map)
    return out.clamp(0, 1) if clip else out


# ------------------------------------------------------------------------------------- helpers --
SIZES = [(8, 12), (7, 9), (9, 6), (5, 4), (3, 5), (2, 2), (2, 3), (14, 11), (37, 26)]
GAINS = [[2.0, 1.0, 1.6], [1.4, 1.0, 2.2]]
CCMS = [
    [[1.7, -0.5, -0.2], [-0.3, 1.5, -0.2], [0.0, -0.6, 1.6]],
    [[1.9, -0.8, -0.1], [-0.2, 1.4, -0.2], [0.1, -0.4, 1.3]],
]


@pytest.fixture
def small_chunks(monkeypatch):
    """A few packed rows per chunk, so that images of a few dozen pixels take the chunked path with
    first, middle and last chunks (the last one shorter), on two threads."""
    monkeypatch.setattr(demosaic_module, "_CHUNK_ELEMENTS", 16)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _both_paths(fn, *inputs):
    """``fn(*inputs)`` through the autograd path (inputs requiring grad) and the in-place path."""
    with_grad = fn(*(x.detach().clone().requires_grad_() for x in inputs))
    with torch.no_grad():
        in_place = fn(*inputs)
    return with_grad.detach(), in_place


# --------------------------------------------------------------------------------------- tests --
@pytest.mark.parametrize("method", ["bilinear", "malvar"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_demosaic_matches_the_full_resolution_formulation(method, pattern, small_chunks):
    for size in SIZES:
        if method == "malvar" and min(size) < 3:
            continue
        mosaic = torch.from_numpy(RNG.random((2, 1, *size)))
        expected = reference_demosaic(mosaic, pattern, method)
        for out in _both_paths(lambda m: demosaic(m, pattern, method), mosaic):
            assert out.shape == (2, 3, *size) and out.is_contiguous()
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-12, msg=f"{size}")
        # float32: the sums are reordered, so agreement is to rounding
        single = mosaic.float()
        with torch.no_grad():
            torch.testing.assert_close(demosaic(single, pattern, method), reference_demosaic(single, pattern, method),
                                       rtol=0, atol=1e-6)


def test_demosaic_chunked_on_threads_equals_one_piece(small_chunks):
    mosaic = torch.from_numpy(RNG.random((1, 1, 64, 50)))
    for method in ("bilinear", "malvar"):
        with_grad, chunked = _both_paths(lambda m, method=method: demosaic(m, "GRBG", method), mosaic)
        torch.testing.assert_close(chunked, with_grad, rtol=0, atol=1e-15)
        torch.testing.assert_close(chunked, reference_demosaic(mosaic, "GRBG", method), rtol=0, atol=1e-12)
    assert torch.get_num_threads() == 2  # the workers' single-thread setting does not leak


def test_one_chunk_in_place_path_as_on_a_gpu(monkeypatch):
    # On a GPU the in-place path runs as a single chunk of the whole image; the same code on the CPU:
    monkeypatch.setattr(demosaic_module, "_CHUNK_ELEMENTS", 1 << 40)
    raw = torch.from_numpy(RNG.uniform(0, 1.1, (2, 1, 37, 26)))
    gains, ccm = torch.tensor(GAINS, dtype=raw.dtype), torch.tensor(CCMS, dtype=raw.dtype)
    for method in ("bilinear", "malvar"):
        with torch.no_grad():
            torch.testing.assert_close(demosaic(raw, "BGGR", method), reference_demosaic(raw, "BGGR", method),
                                       rtol=0, atol=1e-12)
            out = render(raw, "BGGR", gains, ccm, demosaic_method=method)
        torch.testing.assert_close(out, reference_render(raw, "BGGR", gains, ccm, method, True, True),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "pattern, method, tone, clip",
    [("RGGB", "malvar", True, True), ("BGGR", "bilinear", True, True), ("GBRG", "malvar", False, False),
     ("GRBG", "bilinear", False, True), ("RGGB", "bilinear", True, False), ("GBRG", "malvar", False, True)],
)
def test_render_matches_the_previous_composition(pattern, method, tone, clip, small_chunks):
    for size in [(20, 26), (15, 9), (6, 7)]:
        raw = torch.from_numpy(RNG.uniform(-0.05, 1.1, (2, 1, *size)))
        gains, ccm = torch.tensor(GAINS, dtype=raw.dtype), torch.tensor(CCMS, dtype=raw.dtype)
        expected = reference_render(raw, pattern, gains, ccm, method, tone, clip)
        for out in _both_paths(lambda r, g, c: render(r, pattern, g, c, demosaic_method=method, tone=tone, clip=clip),
                               raw, gains, ccm):
            torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        # shared parameters (one gain vector and matrix for the batch), float32
        with torch.no_grad():
            out = render(raw.float(), pattern, GAINS[1], CCMS[0], demosaic_method=method, tone=tone, clip=clip)
        expected = reference_render(raw.float(), pattern, GAINS[1], CCMS[0], method, tone, clip)
        # float32 demosaic sums agree to ~1e-7; the sRGB curve's slope (12.92) scales that up near black
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-5)


def test_render_gradients_reach_raw_gains_and_matrix():
    raw = torch.from_numpy(RNG.uniform(0.1, 0.5, (2, 1, 6, 6))).requires_grad_()
    gains = torch.tensor(GAINS, dtype=torch.float64, requires_grad=True)
    ccm = torch.tensor(CCMS, dtype=torch.float64, requires_grad=True) * 0.5
    assert torch.autograd.gradcheck(lambda r, g, c: render(r, "GBRG", g, c), (raw, gains, ccm))
    # a learned colour matrix alone (raw without grad) still gets its gradient
    matrix = torch.eye(3, dtype=torch.float64, requires_grad=True)
    render(raw.detach(), "RGGB", GAINS[0], matrix, tone=False, clip=False).sum().backward()
    assert matrix.grad is not None and matrix.grad.abs().sum() > 0


def test_inputs_are_not_modified(small_chunks):
    raw = torch.from_numpy(RNG.uniform(0, 1.2, (1, 1, 16, 18)))
    gains, ccm = torch.tensor(GAINS[0], dtype=raw.dtype), torch.tensor(CCMS[0], dtype=raw.dtype)
    copies = [t.clone() for t in (raw, gains, ccm)]
    with torch.no_grad():
        render(raw, "RGGB", gains, ccm)
        demosaic(raw, "RGGB", "malvar")
        linear_to_srgb(raw)
        smoothstep_tone(raw)
    for original, copy in zip((raw, gains, ccm), copies, strict=True):
        assert torch.equal(original, copy)


def test_in_place_curves_equal_the_out_of_place_ones():
    x = torch.from_numpy(RNG.uniform(-0.2, 1.3, 1000)).float()
    x[:3] = torch.tensor([0.0, 0.0031308, 1.0])

    def srgb(v):
        return torch.where(v <= 0.0031308, 12.92 * v, 1.055 * v.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)

    def tone(v):
        return 3.0 * v.clamp(0, 1) ** 2 - 2.0 * v.clamp(0, 1) ** 3

    bright = x.clamp(min=0.01)  # no linear segment: the shortcut must give the same values
    with torch.no_grad():
        for values in (x, bright):
            assert torch.equal(linear_to_srgb_(values.clone()), srgb(values))
            assert torch.equal(linear_to_srgb(values), srgb(values))
        assert torch.equal(smoothstep_tone_(x.clone()), tone(x)) and torch.equal(smoothstep_tone(x), tone(x))
        # render's encoder: exp/log and a minimum, to within 2e-7 (3e-8 in the sliver under the breakpoint)
        fine = torch.cat([x, torch.linspace(0.0031307, 0.0031309, 101)])
        torch.testing.assert_close(encode_srgb_fast_(fine.clone()), srgb(fine), rtol=0, atol=2e-7)
        fine64 = torch.from_numpy(RNG.uniform(-0.5, 3.0, 10000))
        torch.testing.assert_close(encode_srgb_fast_(fine64.clone()), srgb(fine64), rtol=0, atol=1e-12)
    # with autograd the out-of-place formulas run: same values, and a gradient
    graded = x.clone().requires_grad_()
    assert torch.equal(linear_to_srgb(graded).detach(), srgb(x)) and torch.equal(smoothstep_tone(graded).detach(), tone(x))
    linear_to_srgb(graded).sum().backward()
    assert torch.isfinite(graded.grad).all() and graded.grad[0] == pytest.approx(12.92)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_integer_mosaic_normalises_bit_for_bit(pattern, monkeypatch):
    levels = importlib.import_module("isplab.isp.levels")
    monkeypatch.setattr(levels, "_NORMALIZE_CHUNK_ELEMENTS", 64)  # several chunks
    mosaic = torch.from_numpy(RNG.integers(0, 4096, (2, 1, 20, 14)).astype(np.uint16))
    black = torch.tensor([[64.0, 70.0, 80.0, 90.0], [100.0, 110.0, 120.0, 130.0]])
    for clip in (True, False):
        out = normalize_mosaic(mosaic, black, torch.tensor([4095.0, 4000.0]), pattern, clip=clip)
        assert out.dtype == torch.float32
        assert torch.equal(out, reference_normalize(mosaic, black, [4095.0, 4000.0], pattern, clip))
    odd = mosaic[:1, :, :7, :9].to(torch.int32)
    assert torch.equal(normalize_mosaic(odd, black[0], 4095, pattern), reference_normalize(odd, black[0], 4095, pattern, True))


def test_inference_mode_reaches_the_worker_threads(small_chunks, monkeypatch):
    # grad and inference modes are per thread: the chunk workers must run in the caller's
    levels = importlib.import_module("isplab.isp.levels")
    monkeypatch.setattr(levels, "_NORMALIZE_CHUNK_ELEMENTS", 64)
    raw = torch.from_numpy(RNG.uniform(0, 1, (1, 1, 24, 30)))
    dn = torch.from_numpy(RNG.integers(0, 1024, (1, 1, 24, 30)))
    with torch.no_grad():
        expected = render(raw, "GRBG", GAINS[0], CCMS[0]), normalize_mosaic(dn, [16.0] * 4, 1023, "GRBG")
    with torch.inference_mode():
        out = render(raw, "GRBG", GAINS[0], CCMS[0]), normalize_mosaic(dn, [16.0] * 4, 1023, "GRBG")
    for got, want in zip(out, expected, strict=True):
        assert got.is_inference() and torch.equal(got, want)


def test_a_failing_chunk_is_reported_in_the_caller():
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        done = []

        def work(item, scratch):
            if item == 3:
                raise ValueError("chunk 3 failed")
            done.append(item)

        with pytest.raises(ValueError, match="chunk 3 failed"):
            run_chunks(work, range(6))
        assert torch.get_num_threads() == 2
        run_chunks(lambda item, scratch: done.append(item), range(10, 20))
        assert sorted(done[-10:]) == list(range(10, 20))
    finally:
        torch.set_num_threads(torch_threads)


@pytest.mark.slow
def test_benchmark_compares_read_and_render_with_rawpy(capsys):
    """``benchmarks/foundation.py``'s comparison runs (tiny image) and reports what it measured."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "benchmarks" / "foundation.py"
    spec = importlib.util.spec_from_file_location("foundation_benchmark", path)
    foundation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(foundation)
    rows = foundation.raw_render_comparison(64, 48, torch.device("cpu"), 1, lambda: None)
    assert [(r["isplab_demosaic"], r["rawpy_demosaic"]) for r in rows] == [("bilinear", "LINEAR"), ("malvar", "AHD")]
    for row in rows:
        assert row["ratio"] == pytest.approx(row["isplab_s"] / row["rawpy_s"])
        assert row["target_met"] == (row["ratio"] <= 1.5) and row["megapixels"] == pytest.approx(64 * 48 / 1e6)
    assert "within 1.5x" in capsys.readouterr().out
