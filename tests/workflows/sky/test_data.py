"""Synthetic panoramas, COCO/mask loading, the split by image and random patches."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from isplab.errors import IsplabError
from isplab.io.image import read_image, write_image
from isplab.workflows.sky.data import (
    PatchOptions,
    SkyPatchDataset,
    load_coco,
    open_dataset,
    rasterize,
    split_by_image,
)
from isplab.workflows.sky.hdr import log_decode
from isplab.workflows.sky.synth import SUN_RATIO, make_sample, synthesize

SIZE = (192, 96)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("sky") / "data"
    synthesize(out, 4, size=SIZE, seed=3)
    return out


def test_rasterize_square_minus_hole():
    square = rasterize([[2, 2, 6, 2, 6, 6, 2, 6]], [], 10, 10)
    assert square.sum() == 16 and square[2:6, 2:6].all()
    ring = rasterize([[0, 0, 10, 0, 10, 10, 0, 10]], [[2, 2, 6, 2, 6, 6, 2, 6]], 10, 10)
    assert ring.sum() == 84 and not ring[2:6, 2:6].any() and ring[0].all()


def test_synth_writes_label_studio_coco(dataset):
    coco = json.loads((dataset / "result.json").read_text())
    assert {c["id"]: c["name"] for c in coco["categories"]} == {1: "sky", 2: "object in sky"}
    assert [im["file_name"] for im in coco["images"]] == [f"images/sky_{i:05d}.exr" for i in range(4)]
    assert all((im["width"], im["height"]) == SIZE for im in coco["images"])
    for ann in coco["annotations"]:
        poly = ann["segmentation"][0]
        assert ann["iscrowd"] == 0 and len(poly) >= 6 and ann["area"] > 0
        assert min(poly[0::2]) >= 0 and max(poly[0::2]) <= SIZE[0]
    per_image = [sum(a["image_id"] == i and a["category_id"] == 1 for a in coco["annotations"]) for i in range(4)]
    assert per_image == [1, 1, 1, 1]
    assert any(a["category_id"] == 2 for a in coco["annotations"])  # objects inside the sky occur


def test_synth_images_match_their_labels(dataset):
    for i, sample in enumerate(open_dataset(dataset)):
        image, mask = sample.load()
        assert image.hdr and image.pixels.shape == (SIZE[1], SIZE[0], 3)
        expected_image, _, objects, expected_mask = make_sample(3, i, SIZE)
        np.testing.assert_array_equal(mask, expected_mask)  # the COCO path gives the drawn mask
        np.testing.assert_array_equal(image.pixels, expected_image)
        sky, ground = image.pixels[mask].mean(1), image.pixels[~mask].mean(1)
        assert np.median(sky) > 3 * np.median(ground)
        # the sun: at least SUN_RATIO[0] / 2 above the sky's median (the halo adds a little)
        assert sky.max() / np.median(sky) > SUN_RATIO[0] / 2
        assert mask[0].mean() > 0.9 and not mask[-1].any()  # sky at the top, ground at the bottom
        for poly in objects:  # class 2 is cut out of the sky
            cx, cy = int(np.mean(poly[0::2])), int(np.mean(poly[1::2]))
            assert not mask[cy, cx]


def test_synth_is_reproducible_and_refuses_to_merge(tmp_path, dataset):
    again = tmp_path / "again"
    synthesize(again, 4, size=SIZE, seed=3)
    assert (again / "result.json").read_text() == (dataset / "result.json").read_text()
    with pytest.raises(IsplabError, match="already holds"):
        synthesize(again, 1, size=SIZE, seed=4)
    synthesize(again, 1, size=SIZE, seed=4, overwrite=True)
    assert sorted(p.name for p in (again / "images").iterdir()) == ["sky_00000.exr"]
    assert not np.array_equal(read_image(again / "images/sky_00000.exr"), read_image(dataset / "images/sky_00000.exr"))


def _coco(tmp_path, polygon, width=8, height=6, image_id=0, ann_image_id=0, image_size=None):
    (tmp_path / "images").mkdir(exist_ok=True)
    w, h = image_size or (width, height)
    write_image(tmp_path / "images/a.png", np.zeros((h, w, 3), np.uint8), overwrite=True)
    coco = {
        "images": [{"id": image_id, "width": width, "height": height, "file_name": "images/a.png"}],
        "categories": [{"id": 1, "name": "sky"}],
        "annotations": [{"id": 7, "image_id": ann_image_id, "category_id": 1, "segmentation": [polygon]}],
    }
    (tmp_path / "result.json").write_text(json.dumps(coco))
    return tmp_path / "result.json"


def test_coco_bad_input_one_line_each(tmp_path):
    inside = [0, 0, 8, 0, 8, 3, 0, 3]
    sample = load_coco(_coco(tmp_path, inside))[0]
    assert sample.load()[1].sum() == 8 * 3
    with pytest.raises(IsplabError, match=r"annotation 7 has a polygon outside its image a\.png \(8x6\)"):
        load_coco(_coco(tmp_path, [0, 0, 20, 0, 20, 3, 0, 3]))
    with pytest.raises(IsplabError, match="annotation 7 is for image id 5, which is not among its images"):
        load_coco(_coco(tmp_path, inside, ann_image_id=5))
    sample = load_coco(_coco(tmp_path, inside, image_size=(10, 6)))[0]
    with pytest.raises(IsplabError, match=r"size mismatch: image .*a\.png is 10x6 but .*result\.json annotates it as 8x6"):
        sample.load()
    coco = json.loads((tmp_path / "result.json").read_text())
    coco["images"][0]["file_name"] = "images/gone.png"
    (tmp_path / "result.json").write_text(json.dumps(coco))
    with pytest.raises(IsplabError, match=r"image 'images/gone\.png' \(id 0\) does not exist"):
        load_coco(tmp_path / "result.json")
    (tmp_path / "result.json").write_text("{not json")
    with pytest.raises(IsplabError, match="not a COCO annotation file"):
        load_coco(tmp_path / "result.json")


def test_mask_folder_layout(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    write_image(tmp_path / "images/a.png", np.zeros((4, 5, 3), np.uint8))
    mask = np.zeros((4, 5), np.uint8)
    mask[:2] = 255
    write_image(tmp_path / "masks/a.png", mask)
    (sample,) = open_dataset(tmp_path)
    np.testing.assert_array_equal(sample.load()[1], mask > 0)
    write_image(tmp_path / "masks/a.png", np.zeros((4, 6), np.uint8), overwrite=True)
    with pytest.raises(IsplabError, match="size mismatch"):
        sample.load()
    write_image(tmp_path / "images/b.png", np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(IsplabError, match=r"b\.png has no mask"):
        open_dataset(tmp_path)


def test_split_is_by_image_and_reproducible(dataset):
    samples = [replace(s, image=s.image.with_name(f"img{i}.exr")) for i, s in enumerate(open_dataset(dataset) * 2)]
    train, val = split_by_image(samples, 0.25, seed=1)
    names = lambda ss: [s.name for s in ss]  # noqa: E731
    assert len(val) == 2 and len(train) == 6
    assert set(names(train)).isdisjoint(names(val)) and set(names(train)) | set(names(val)) == set(names(samples))
    assert names(split_by_image(samples, 0.25, seed=1)[1]) == names(val)
    assert any(names(split_by_image(samples, 0.25, seed=s)[1]) != names(val) for s in range(2, 6))
    with pytest.raises(IsplabError, match="at least 2 images"):
        split_by_image(samples[:1], 0.25)


def test_patches_are_a_function_of_seed_epoch_index(dataset):
    samples = open_dataset(dataset)
    options = PatchOptions(patch=32, scale=(0.5, 2.0))
    a = SkyPatchDataset(samples, options, 8, seed=5)
    b = SkyPatchDataset(samples, options, 8, seed=5)
    x0, y0 = a[3]
    assert x0.shape == (3, 32, 32) and y0.shape == (1, 32, 32)
    torch_equal = lambda p, q: bool((p == q).all())  # noqa: E731
    assert torch_equal(b[3][0], x0) and torch_equal(b[3][1], y0)
    a.set_epoch(1)
    assert not torch_equal(a[3][0], x0)
    a.set_epoch(0)
    assert torch_equal(a[3][0], x0)
    fixed = SkyPatchDataset(samples, options, 8, augment=False, seed=5)
    first = fixed[2][0]
    fixed.set_epoch(4)
    assert torch_equal(fixed[2][0], first)


def test_patch_labels_follow_pixels_through_augmentation(tmp_path):
    # sky = 10.0, ground = 0.1: after exposure (+-2 stops) and gamma (0.8..1.25) they stay either
    # side of 1.0, so the decoded input tells the label; flips must move both alike.
    h, w = 64, 96
    mask = np.zeros((h, w), bool)
    mask[: h // 2] = True
    mask[:, : w // 3] = ~mask[:, : w // 3]
    mask[10:20, 60:70] = False
    pixels = np.where(mask[..., None], 10.0, 0.1).astype(np.float32) * np.ones(3, np.float32)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    write_image(tmp_path / "images/a.exr", pixels)
    write_image(tmp_path / "masks/a.png", mask.astype(np.uint8) * 255)
    data = SkyPatchDataset(open_dataset(tmp_path), PatchOptions(patch=32, scale=(1.0, 1.0)), 40, seed=0)
    values = set()
    for i in range(40):
        x, y = data[i]
        linear = log_decode(x.numpy())
        np.testing.assert_array_equal(linear[0] > 1.0, y[0].numpy() > 0.5)
        values.add(round(float(linear.max()), 3))
    assert len(values) > 5  # exposure/gamma vary
