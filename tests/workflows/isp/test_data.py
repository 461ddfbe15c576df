"""Pairs, packing and Bayer-safe augmentation of the learned-ISP data pipeline."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import rawpy
import torch

from isplab.data.synth import SensorSpec, synthesize_dataset
from isplab.errors import IsplabError
from isplab.isp.bayer import unpack
from isplab.workflows.isp.data import (
    CHALLENGE_SCALE,
    FullImageDataset,
    PairSource,
    PatchDataset,
    open_pairs,
    packed_to_rgb,
)


def write_challenge_folder(root: Path, raw_dir: str, rgb_dir: str, sizes: dict[str, int], side: int = 64, seed: int = 0):
    """A challenge-shaped dataset written with OpenCV directly (not isplab's writer)."""
    rng = np.random.default_rng(seed)
    for split, count in sizes.items():
        (root / split / raw_dir).mkdir(parents=True)
        (root / split / rgb_dir).mkdir(parents=True)
        for i in range(count):
            raw = rng.integers(0, 1024, (side, side), dtype=np.uint16)
            rgb = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            cv2.imwrite(str(root / split / raw_dir / f"{i}.png"), raw)
            cv2.imwrite(str(root / split / rgb_dir / f"{i}.png"), rgb[..., ::-1])  # OpenCV writes BGR


@pytest.fixture
def mai(tmp_path: Path) -> Path:
    write_challenge_folder(tmp_path / "mai", "mediatek_raw", "fujifilm", {"train": 11, "val": 2, "test": 2})
    return tmp_path / "mai"


def test_challenge_packing_matches_the_challenge_loader(mai: Path):
    source = open_pairs(mai, "train")
    assert source.layout == "mai" and source.packing == "challenge"
    # numbered files sort numerically, as the challenge numbers them 0..N-1
    assert source.names == [str(i) for i in range(11)]
    packed, target = source.load(10)
    raw = cv2.imread(str(mai / "train/mediatek_raw/10.png"), cv2.IMREAD_UNCHANGED).astype(np.float64)
    # The challenge's load_dataset: extract_bayer_channels, in (B, Gb, R, Gr) order, / (4*255).
    expected = np.stack([raw[1::2, 1::2], raw[0::2, 1::2], raw[0::2, 0::2], raw[1::2, 0::2]]) / (4 * 255)
    assert packed.dtype == torch.float32 and packed.shape == (4, 32, 32)
    np.testing.assert_allclose(packed.numpy(), expected, rtol=1e-6)
    rgb = cv2.imread(str(mai / "train/fujifilm/10.png"))[..., ::-1].astype(np.float64) / 255
    assert target.shape == (3, 64, 64)
    np.testing.assert_allclose(target.numpy(), rgb.transpose(2, 0, 1), atol=1e-6)
    assert len(open_pairs(mai, "val")) == 2


def test_zurich_layout_is_detected(tmp_path: Path):
    write_challenge_folder(tmp_path, "huawei_raw", "canon", {"train": 3, "test": 1}, side=32)
    source = open_pairs(tmp_path, "test")
    assert (source.layout, source.packing, len(source)) == ("zurich", "challenge", 1)
    packed, target = source.load(0)
    raw = cv2.imread(str(tmp_path / "test/huawei_raw/0.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_allclose(packed[2].numpy(), raw[0::2, 0::2] / 1020.0, rtol=1e-6)  # R plane
    assert target.shape == (3, 32, 32)


def test_dng_packing_uses_the_files_levels(tmp_path: Path):
    sensor = SensorSpec(pattern="GRBG", black_level=256.0, white_level=4095)
    synthesize_dataset(tmp_path / "syn", 2, size=(48, 32), sensor=sensor, progress=False)
    source = open_pairs(tmp_path / "syn", "train")  # no split folders: the folder itself
    assert (source.layout, source.packing, source.names) == ("dng", "dng", ["synth_00000", "synth_00001"])
    packed, target = source.load(1)
    with rawpy.imread(str(tmp_path / "syn/synth_00001.dng")) as raw:  # independent reader
        mosaic = raw.raw_image_visible.astype(np.float64)
    normalised = np.clip((mosaic - 256) / (4095 - 256), 0, 1)
    # GRBG: R at (0, 1), Gr at (0, 0), Gb at (1, 1), B at (1, 0); canonical order R, Gr, Gb, B
    expected = np.stack([normalised[0::2, 1::2], normalised[0::2, 0::2], normalised[1::2, 1::2], normalised[1::2, 0::2]])
    assert packed.shape == (4, 16, 24)
    np.testing.assert_allclose(packed.numpy(), expected, atol=1e-6)
    png = cv2.imread(str(tmp_path / "syn/synth_00001_target.png"), cv2.IMREAD_UNCHANGED)[..., ::-1] / 65535.0
    np.testing.assert_allclose(target.numpy(), png.transpose(2, 0, 1), atol=1e-6)


def test_dng_split_folders_and_targets_folder(tmp_path: Path):
    synthesize_dataset(tmp_path / "d/val", 1, size=(32, 32), progress=False)
    (tmp_path / "d/val/targets").mkdir()
    (tmp_path / "d/val/synth_00000_target.png").rename(tmp_path / "d/val/targets/synth_00000.png")
    source = open_pairs(tmp_path / "d", "val")
    assert source.root == tmp_path / "d/val" and source.targets == [tmp_path / "d/val/targets/synth_00000.png"]


def test_errors_name_what_is_wrong(tmp_path: Path, mai: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(IsplabError, match=r"no RAW/RGB pairs found in .*empty: looked for .*mediatek_raw.*huawei_raw.*\*\.dng"):
        open_pairs(tmp_path / "empty")
    with pytest.raises(IsplabError, match="does not exist"):
        open_pairs(tmp_path / "nowhere")
    with pytest.raises(IsplabError, match="unknown layout 'sidd'"):
        open_pairs(mai, layout="sidd")
    with pytest.raises(IsplabError, match="unknown packing 'rggb'"):
        open_pairs(mai, packing="rggb")
    (mai / "train/fujifilm/3.png").unlink()
    with pytest.raises(IsplabError, match=r"raw .*mediatek_raw/3\.png has no target: expected .*fujifilm/3\.png"):
        open_pairs(mai, "train")
    cv2.imwrite(str(mai / "val/fujifilm/1.png"), np.zeros((64, 62, 3), np.uint8))
    with pytest.raises(IsplabError, match=r"size mismatch: raw .*1\.png is 64x64 but its target .*1\.png is 64x62"):
        open_pairs(mai, "val").load(1)
    synthesize_dataset(tmp_path / "dng", 1, size=(32, 32), progress=False)
    (tmp_path / "dng/synth_00000_target.png").unlink()
    with pytest.raises(IsplabError, match=r"synth_00000\.dng has no target: expected synth_00000_target\.png"):
        open_pairs(tmp_path / "dng")


class ConstantSites(PairSource):
    """A source whose mosaic holds one constant per CFA site and whose target's channel 0 is a
    position code equal to the mosaic's, to check phase and alignment after augmentation."""

    def __init__(self, side: int, pattern: str, packing: str):
        super().__init__([Path("a")], [Path("a")], "dng", packing, Path("."))
        self.side, self.pattern = side, pattern

    def load_mosaic(self, i):
        site = torch.tensor([[0.1, 0.2], [0.3, 0.4]]).repeat(self.side // 2, self.side // 2)
        code = torch.arange(self.side * self.side, dtype=torch.float32).reshape(self.side, self.side)
        return site, torch.stack([code, site, torch.zeros_like(site)]), self.pattern


@pytest.mark.parametrize(("pattern", "packing"), [("RGGB", "challenge"), ("GBRG", "dng"), ("BGGR", "dng")])
def test_augmentation_keeps_the_bayer_phase(pattern: str, packing: str):
    source = ConstantSites(20, pattern, packing)
    dataset = PatchDataset(source, patch=16, patches_per_epoch=64, augment=True, seed=3)
    tile = {(0, 0): 0.1, (0, 1): 0.2, (1, 0): 0.3, (1, 1): 0.4}
    site_of = {pattern[2 * r + c]: (r, c) for r, c in tile}  # R and B (G: one of the two)
    greens = {v for (r, c), v in tile.items() if pattern[2 * r + c] == "G"}
    order = ["B", "G", "R", "G"] if packing == "challenge" else ["R", "G", "G", "B"]
    for i in range(len(dataset)):
        packed, target = dataset[i]
        assert packed.shape == (4, 8, 8) and target.shape == (3, 16, 16)
        # every packed plane is constant: no plane mixes two CFA sites
        assert torch.all(packed == packed[:, :1, :1])
        for colour, plane in zip(order, packed[:, 0, 0].tolist()):
            if colour == "G":
                assert any(plane == pytest.approx(g) for g in greens)
            else:
                assert plane == pytest.approx(tile[site_of[colour]])  # red and blue exactly
        # the target moved with the mosaic: its copy of the site map still has R and B in place
        for colour in "RB":
            r, c = site_of[colour]
            assert torch.all(target[1, r::2, c::2] == tile[site_of[colour]])


def test_augmented_target_matches_the_augmented_mosaic():
    """Unpacking the augmented input gives the same mosaic as the target's copy of it."""
    side = 20
    source = ConstantSites(side, "RGGB", "dng")
    code = torch.arange(side * side, dtype=torch.float32).reshape(side, side)
    source.load_mosaic = lambda i: (code, torch.stack([code, code, code]), "RGGB")
    dataset = PatchDataset(source, patch=16, patches_per_epoch=200, augment=True, seed=0)
    transforms = set()
    for i in range(len(dataset)):
        packed, target = dataset[i]
        mosaic = unpack(packed, "RGGB")
        # greens may swap sites under a transpose, R and B may not: compare R and B sites
        np.testing.assert_array_equal(mosaic[0::2, 0::2], target[0, 0::2, 0::2])
        np.testing.assert_array_equal(mosaic[1::2, 1::2], target[0, 1::2, 1::2])
        # red sites of the patch hold codes of red sites of the source (even row and column)
        red = mosaic[0::2, 0::2].long()
        assert torch.all((red // side) % 2 == 0) and torch.all((red % side) % 2 == 0)
        # how the source's rows and columns run through the patch identifies the transform
        transforms.add((int(mosaic[2, 0] - mosaic[0, 0]), int(mosaic[0, 2] - mosaic[0, 0])))
    assert len(transforms) == 8  # all rotations/flips occurred


def test_patch_sized_images_only_use_shift_free_transforms():
    side = 16
    code = torch.arange(side * side, dtype=torch.float32).reshape(side, side)
    source = ConstantSites(side, "RGGB", "dng")
    source.load_mosaic = lambda i: (code, torch.stack([code, code, code]), "RGGB")
    dataset = PatchDataset(source, patch=16, patches_per_epoch=40, augment=True, seed=1)
    right_neighbours = set()
    for i in range(len(dataset)):
        red = dataset[i][0][0].long()
        assert torch.all((red // side) % 2 == 0) and torch.all((red % side) % 2 == 0)
        assert red[0, 0] == 0
        right_neighbours.add(int(red[0, 1]))
    assert right_neighbours == {2, 2 * side}  # identity and transpose, nothing else


def test_patches_are_a_pure_function_of_seed_epoch_and_index(mai: Path):
    source = open_pairs(mai)
    dataset = PatchDataset(source, patch=32, patches_per_epoch=6, seed=5)
    forward = [dataset[i][0] for i in range(6)]
    backward = [dataset[i][0] for i in reversed(range(6))][::-1]
    torch.manual_seed(123)  # the global RNG plays no part
    np.random.seed(123)
    again = [PatchDataset(source, patch=32, patches_per_epoch=6, seed=5)[i][0] for i in range(6)]
    for a, b, c in zip(forward, backward, again):
        assert torch.equal(a, b) and torch.equal(a, c)
    # different indices, epochs and seeds draw different patches
    assert len({p.numpy().tobytes() for p in forward}) == 6
    dataset.set_epoch(1)
    assert dataset.epoch == 1
    assert all(not torch.equal(a, dataset[i][0]) for i, a in enumerate(forward))
    other_seed = PatchDataset(source, patch=32, patches_per_epoch=6, seed=6)
    assert all(not torch.equal(a, other_seed[i][0]) for i, a in enumerate(forward))
    with pytest.raises(IndexError):
        dataset[6]
    with pytest.raises(IsplabError, match="smaller than the 128x128 patch"):
        PatchDataset(source, patch=128, patches_per_epoch=1)[0]
    with pytest.raises(IsplabError, match="even number"):
        PatchDataset(source, patch=31)
    with pytest.raises(IsplabError, match="seed must be a non-negative integer, got None"):
        PatchDataset(source, seed=None)


def test_persistent_dataloader_workers_see_the_epoch(mai: Path):
    """set_epoch in the main process reaches a worker process started in an earlier epoch."""
    dataset = PatchDataset(open_pairs(mai), patch=32, patches_per_epoch=4, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=1, persistent_workers=True)
    first = next(iter(loader))[0]
    dataset.set_epoch(3)
    second = next(iter(loader))[0]
    expected = torch.stack([dataset[i][0] for i in range(4)])  # epoch 3, computed here
    assert torch.equal(second, expected) and not torch.equal(first, second)
    dataset.set_epoch(0)
    assert torch.equal(first, torch.stack([dataset[i][0] for i in range(4)]))


def test_full_image_dataset_crops_centrally_to_the_model_multiple(mai: Path):
    source = open_pairs(mai, "val")
    packed, target = FullImageDataset(source, multiple=12)[0]
    full_packed, full_target = source.load(0)
    assert packed.shape == (4, 24, 24) and target.shape == (3, 48, 48)
    assert torch.equal(packed, full_packed[:, 4:28, 4:28]) and torch.equal(target, full_target[:, 8:56, 8:56])
    packed, target = FullImageDataset(source, crop=20)[1]
    assert packed.shape == (4, 10, 10) and target.shape == (3, 20, 20)


def test_packed_to_rgb_reads_each_packing_order():
    planes = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(4, 1, 1)
    assert packed_to_rgb(planes, "dng").flatten().tolist() == [1.0, 2.5, 4.0]  # R, Gr, Gb, B
    assert packed_to_rgb(planes, "challenge").flatten().tolist() == [3.0, 3.0, 1.0]  # B, Gb, R, Gr
    assert CHALLENGE_SCALE == 1020
