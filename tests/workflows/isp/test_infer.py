"""Tiled full-resolution inference: equality with whole-image inference, padding, files, memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import rawpy
import torch
from torch import nn

from isplab.data.synth import synthesize_dataset
from isplab.errors import IsplabError
from isplab.io.image import read_image, to_uint8, write_image
from isplab.models.isp import build_isp_model
from isplab.workflows.isp.infer import (
    blend_weights,
    check_outputs,
    load_packed,
    process_files,
    run_full_resolution,
    tile_starts,
)


class LocalISP(nn.Module):
    """Stand-in ISP: two 3x3 convs (receptive field radius 2 packed pixels) + pixel shuffle."""

    def __init__(self, size_multiple: int = 1) -> None:
        super().__init__()
        self.size_multiple = size_multiple
        self.isp_config = {"arch": "local", "num_maps_base": 8, "options": {}}
        self.body = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 12, 3, padding=1))
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2] % self.size_multiple == 0 and x.shape[-1] % self.size_multiple == 0
        return self.shuffle(self.body(x))


def whole_image(model: nn.Module, packed: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.as_tensor(packed)[None])[0].permute(1, 2, 0).numpy()


@pytest.fixture
def model() -> LocalISP:
    torch.manual_seed(0)
    return LocalISP()


def test_tile_starts_cover_with_overlap() -> None:
    for length, tile, overlap in [(60, 32, 16), (90, 32, 16), (1500, 512, 32), (513, 512, 32), (97, 40, 7)]:
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == length
        gaps = np.diff(starts)
        assert np.all(gaps > 0) and np.all(tile - gaps >= overlap), (length, starts)
    assert tile_starts(20, 32, 8) == [0]
    # the fewest tiles: one fewer would leave an overlap below 16
    assert len(tile_starts(60, 32, 16)) == 3 and len(tile_starts(90, 32, 16)) == 5


def test_blend_weights_partition_of_unity_and_discard_band() -> None:
    starts, size, length, overlap = [0, 40, 80], 64, 144, 32
    windows = blend_weights(starts, size, length, overlap)
    total = np.zeros(length)
    for start, window in zip(starts, windows):
        total[start : start + size] += window
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    band = overlap // 4
    assert np.all(windows[0][-band:] == 0) and np.all(windows[1][:band] == 0) and np.all(windows[1][-band:] == 0)
    assert windows[0][0] == 1 and windows[2][-1] == 1  # image borders are kept
    assert np.all(np.diff(windows[1][: size // 2]) >= 0)  # a monotone ramp, no step


def test_tiled_equals_whole_image_for_small_receptive_field(model: LocalISP) -> None:
    rng = np.random.default_rng(0)
    packed = rng.uniform(0, 1, (4, 60, 90)).astype(np.float32)  # 3 x 5 tiles of 32 with overlap 16
    tiled = run_full_resolution(model, packed, tile=32, overlap=16, batch_size=4)
    assert tiled.shape == (120, 180, 3) and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, whole_image(model, packed), atol=2e-6)


def test_tiled_close_to_whole_image_for_large_receptive_field() -> None:
    torch.manual_seed(0)
    unet = build_isp_model("nafnet", 4)  # 4 down-sampling levels: context beyond any overlap
    packed = torch.nn.functional.avg_pool2d(torch.rand(1, 4, 160, 224), 5, 1, 2)[0].numpy()
    tiled = run_full_resolution(unet, packed, tile=64, overlap=16)
    diff = np.abs(tiled - whole_image(unet, packed))
    assert diff.mean() < 2e-3 and diff.max() < 0.03, (diff.mean(), diff.max())


def test_image_smaller_than_tile_is_reflect_padded_to_the_multiple() -> None:
    torch.manual_seed(1)
    model = LocalISP(size_multiple=8)
    packed = np.random.default_rng(1).uniform(0, 1, (4, 20, 28)).astype(np.float32)
    out = run_full_resolution(model, packed, tile=64, overlap=16)
    padded = np.pad(packed, ((0, 0), (0, 4), (0, 4)), mode="reflect")
    np.testing.assert_allclose(out, whole_image(model, padded)[:40, :56], atol=2e-6)


def test_tile_is_rounded_to_the_size_multiple() -> None:
    torch.manual_seed(2)
    model = LocalISP(size_multiple=16)  # its forward asserts every tile is a multiple of 16
    packed = np.random.default_rng(2).uniform(0, 1, (4, 80, 96)).astype(np.float32)
    out = run_full_resolution(model, packed, tile=40, overlap=8)  # tile 40 -> 32: 3 x 4 tiles
    np.testing.assert_allclose(out, whole_image(model, packed), atol=2e-6)


def test_invalid_arguments(model: LocalISP) -> None:
    with pytest.raises(IsplabError, match=r"shape \(4, h, w\), got \(3, 8, 8\)"):
        run_full_resolution(model, np.zeros((3, 8, 8), np.float32))
    with pytest.raises(IsplabError, match="overlap < tile.*tile=16, overlap=16"):
        run_full_resolution(model, np.zeros((4, 40, 40), np.float32), tile=16, overlap=16)
    with pytest.raises(IsplabError, match="unknown packing 'bogus'"):
        load_packed("x.dng", packing="bogus")


def test_load_packed_challenge_png(tmp_path) -> None:
    raw = np.random.default_rng(3).integers(0, 1024, (8, 12)).astype(np.uint16)
    write_image(tmp_path / "0.png", raw)
    packed = load_packed(tmp_path / "0.png", packing="challenge").numpy()
    # The challenge loader: (B, Gb, R, Gr) planes / (4 * 255).
    expected = np.stack([raw[1::2, 1::2], raw[0::2, 1::2], raw[0::2, 0::2], raw[1::2, 0::2]]) / 1020.0
    np.testing.assert_allclose(packed, expected, rtol=1e-6)
    write_image(tmp_path / "rgb.png", np.zeros((8, 12, 3), np.uint8))
    with pytest.raises(IsplabError, match="single-channel raw PNG"):
        load_packed(tmp_path / "rgb.png", packing="challenge")


@pytest.fixture(scope="module")
def dngs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    synthesize_dataset(folder, 2, size=(64, 48), progress=False)
    return sorted(folder.glob("*.dng"))


def test_load_packed_dng_matches_rawpy(dngs) -> None:
    packed = load_packed(dngs[0], packing="dng").numpy()
    with rawpy.imread(str(dngs[0])) as raw:
        mosaic = raw.raw_image_visible.astype(np.float64)
        black = np.asarray(raw.black_level_per_channel, np.float64)[raw.raw_colors_visible]
        normalised = np.clip((mosaic - black) / (raw.white_level - black), 0, 1)
        colours = raw.raw_colors_visible  # LibRaw colour index per site: 0 R, 1 G, 2 B, 3 G2
        description = raw.color_desc.decode()
    assert packed.shape == (4, 24, 32)
    r = normalised[colours == description.index("R")].reshape(24, 32)
    b = normalised[colours == description.index("B")].reshape(24, 32)
    np.testing.assert_allclose(packed[0], r, atol=1e-6)
    np.testing.assert_allclose(packed[3], b, atol=1e-6)


def test_process_files_writes_reports_and_refuses_overwrite(model: LocalISP, dngs, tmp_path) -> None:
    out_dir = tmp_path / "out"
    missing = tmp_path / "missing.dng"
    result = process_files([dngs[0], missing, dngs[1]], model, out_dir, tile=16, overlap=8)
    assert [p.name for p in result.written] == [f"{dngs[0].stem}.png", f"{dngs[1].stem}.png"]
    assert len(result.failed) == 1 and result.failed[0][0] == missing and "not found" in result.failed[0][1]
    written = read_image(out_dir / f"{dngs[0].stem}.png")
    expected = to_uint8(whole_image(model, load_packed(dngs[0]).numpy()))
    assert written.dtype == np.uint8 and written.shape == (48, 64, 3)
    assert np.abs(written.astype(int) - expected).max() <= 1  # 8-bit rounding at the tie

    # An existing output refuses the whole batch before any inference: nothing is written.
    before = (out_dir / f"{dngs[0].stem}.png").read_bytes()
    (out_dir / f"{dngs[1].stem}.png").unlink()
    with pytest.raises(IsplabError, match=rf"^output folder {out_dir} already holds {dngs[0].stem}.png: pass --overwrite"):
        process_files([dngs[1], dngs[0]], model, out_dir)
    assert not (out_dir / f"{dngs[1].stem}.png").exists()
    assert (out_dir / f"{dngs[0].stem}.png").read_bytes() == before
    assert process_files([dngs[0]], model, out_dir, overwrite=True).written
    # two inputs with one stem would write one file twice
    with pytest.raises(IsplabError, match=rf"would both be written to .*{dngs[0].stem}.png"):
        check_outputs([dngs[0], tmp_path / "elsewhere" / dngs[0].name], out_dir, overwrite=True)


@pytest.mark.slow
def test_12_megapixel_peak_memory_is_bounded_by_the_tile() -> None:
    """A 4000 x 3000 output: extra peak RSS beyond input + output stays near the tile budget.

    Run in a fresh interpreter because ru_maxrss is a process-lifetime high-water mark.
    """
    script = textwrap.dedent(
        """
        import json, resource, numpy as np, torch
        from torch import nn
        from isplab.workflows.isp.infer import run_full_resolution
        torch.set_num_threads(1)
        model = nn.Sequential(nn.Conv2d(4, 32, 1), nn.Conv2d(32, 12, 1), nn.PixelShuffle(2))
        packed = np.random.default_rng(0).uniform(0, 1, (4, 1500, 2000)).astype(np.float32)
        run_full_resolution(model, packed[:, :64, :64], tile=256, overlap=32)  # warm up allocators
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = run_full_resolution(model, packed, tile=256, overlap=32, batch_size=2)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"extra_mb": (after - before) / 1024, "out_mb": out.nbytes / 2**20,
                          "shape": list(out.shape)}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["shape"] == [3000, 4000, 3]
    # Whole-image inference needs the (32, 1500, 2000) float32 activation (366 MB) on top of the
    # 137 MB result (measured: +280 MB beyond it); 256-pixel tiles need about 10 MB.
    assert stats["extra_mb"] < stats["out_mb"] + 48, stats
