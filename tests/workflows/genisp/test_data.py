"""GenISP detection data: COCO loading (string ids, checks), boxes through resize and augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from isplab.errors import IsplabError
from isplab.io.dng import write_dng
from isplab.io.image import write_image
from isplab.io.raw import RawImage
from isplab.workflows.genisp.data import (
    Augment,
    DetectionDataset,
    detection_collate,
    hflip_boxes,
    load_coco,
)
from isplab.workflows.genisp.preprocess import load_raw_xyz

CATEGORIES = [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}, {"id": 3, "name": "car"}]


def _write_set(tmp_path, images, annotations, categories=CATEGORIES, name="ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _png(path, h=40, w=60, rect=None, value=0.2):
    image = np.full((h, w, 3), value, np.float32)
    if rect is not None:
        x1, y1, x2, y2 = rect
        image[y1:y2, x1:x2] = [0.9, 0.6, 0.3]
    write_image(path, (image * 65535).round().astype(np.uint16))
    return image


def _two_images(tmp_path):
    _png(tmp_path / "DSC002.png")
    _png(tmp_path / "DSC001.png")
    images = [
        {"id": "DSC002", "file_name": "DSC002.png", "width": 60, "height": 40},
        {"id": "DSC001", "file_name": "DSC001.png", "width": 60, "height": 40},
    ]
    annotations = [
        {"id": 1, "image_id": "DSC002", "category_id": 3, "bbox": [10, 4, 20, 10]},
        {"id": 2, "image_id": "DSC001", "category_id": 1, "bbox": [50, 30, 20, 20]},  # partly outside
    ]
    return images, annotations


def test_string_ids_map_stably_and_boxes_become_xyxy(tmp_path):
    images, annotations = _two_images(tmp_path)
    coco = load_coco(_write_set(tmp_path, images, annotations), tmp_path)
    assert coco.id_map == {"DSC001": 1, "DSC002": 2}
    reordered = load_coco(_write_set(tmp_path, images[::-1], annotations[::-1], name="b.json"), tmp_path)
    assert reordered.id_map == coco.id_map
    by_file = {im.file_id: im for im in coco.images}
    np.testing.assert_array_equal(by_file["DSC002"].boxes, [[10, 4, 30, 14]])
    assert by_file["DSC002"].labels.tolist() == [3] and by_file["DSC002"].id == 2
    np.testing.assert_array_equal(by_file["DSC001"].boxes, [[50, 30, 60, 40]])  # clipped to 60x40
    assert coco.clipped == 1
    document = coco.coco_json()
    assert {a["image_id"] for a in document["annotations"]} == {1, 2}
    assert document["annotations"][0]["bbox"] == [10.0, 4.0, 20.0, 10.0]


def test_integer_ids_are_kept_and_categories_renumbered_by_name(tmp_path):
    _png(tmp_path / "a.png")
    images = [{"id": 17, "file_name": "a.png", "width": 60, "height": 40}]
    annotations = [{"id": 1, "image_id": 17, "category_id": 7, "bbox": [1, 2, 3, 4]}]
    coco = load_coco(_write_set(tmp_path, images, annotations, [{"id": 7, "name": "car"}]), tmp_path)
    assert coco.id_map == {17: 17} and coco.images[0].labels.tolist() == [3]
    own = load_coco(_write_set(tmp_path, images, annotations, [{"id": 7, "name": "bus"}], "c.json"), tmp_path, classes=None)
    assert own.categories == {7: "bus"} and own.images[0].labels.tolist() == [7]


def test_bad_annotation_files_name_the_file(tmp_path):
    images, annotations = _two_images(tmp_path)
    cases = {
        "unknown_name": (images, annotations, [{"id": 1, "name": "dog"}], "unknown category 'dog'"),
        "unknown_id": (images, [{**annotations[0], "category_id": 9}], CATEGORIES, "unknown category id 9"),
        "outside": (images, [{**annotations[0], "bbox": [70, 4, 5, 5]}], CATEGORIES, "wholly outside its 60x40 image"),
        "empty_box": (images, [{**annotations[0], "bbox": [1, 4, 0, 5]}], CATEGORIES, "positive width and height"),
        "no_image": (images, [{**annotations[0], "image_id": "nope"}], CATEGORIES, "does not list"),
        "missing": (images + [{"id": "X", "file_name": "X.png"}], annotations, CATEGORIES,
                    r"1 of 3 images are missing from .* \(first: X.png\)"),
    }
    for name, (ims, anns, cats, message) in cases.items():
        path = _write_set(tmp_path, ims, anns, cats, name=f"{name}.json")
        with pytest.raises(IsplabError, match=f"{name}.json: .*{message}"):
            load_coco(path, tmp_path)
    (tmp_path / "X.dng").write_bytes(b"")
    renamed = load_coco(tmp_path / "missing.json", tmp_path, file_suffix=".dng", skip_missing=True)
    assert [im.path.name for im in renamed.images] == ["X.dng"]  # the PNGs are not looked for
    skipped = load_coco(tmp_path / "missing.json", tmp_path, skip_missing=True)
    assert len(skipped) == 2 and skipped.missing == 1
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(IsplabError, match="bad.json: not a readable JSON"):
        load_coco(tmp_path / "bad.json", tmp_path)
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(IsplabError, match="list.json: expected a COCO JSON object"):
        load_coco(tmp_path / "list.json", tmp_path)
    with pytest.raises(IsplabError, match="does not exist"):
        load_coco(tmp_path / "nothing.json", tmp_path)


def test_rgb_items_are_resized_with_their_boxes(tmp_path):
    images, annotations = _two_images(tmp_path)
    coco = load_coco(_write_set(tmp_path, images, annotations), tmp_path)
    dataset = DetectionDataset(coco, short=20, long=100, kind="rgb")
    index = [im.file_id for im in coco.images].index("DSC002")
    image, target = dataset[index]
    assert image.shape == (3, 20, 30) and image.dtype == torch.float32
    torch.testing.assert_close(image, torch.full((3, 20, 30), 0.2), atol=1e-4, rtol=0)
    torch.testing.assert_close(target["boxes"], torch.tensor([[5.0, 2.0, 15.0, 7.0]]))
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [3]
    assert target["image_id"].ndim == 0 and int(target["image_id"]) == 2
    # annotations made on a half-size view of the images are scaled up to them
    half = [{**im, "width": 30, "height": 20} for im in images]
    halved = [{**a, "bbox": [v / 2 for v in a["bbox"]]} for a in annotations]
    coco_half = load_coco(_write_set(tmp_path, half, halved, name="half.json"), tmp_path)
    torch.testing.assert_close(DetectionDataset(coco_half, short=20, long=100, kind="rgb")[index][1]["boxes"],
                               target["boxes"])
    images_batch, targets = detection_collate([dataset[0], dataset[1]])
    assert len(images_batch) == 2 and isinstance(targets[1], dict)


def test_hflip_moves_a_box_exactly(tmp_path):
    np.testing.assert_array_equal(hflip_boxes(np.array([[5.0, 2.0, 15.0, 7.0]]), 30), [[15.0, 2.0, 25.0, 7.0]])
    _png(tmp_path / "a.png", rect=(10, 4, 30, 14))
    images = [{"id": "a", "file_name": "a.png", "width": 60, "height": 40}]
    annotations = [{"id": 1, "image_id": "a", "category_id": 2, "bbox": [10, 4, 20, 10]}]
    coco = load_coco(_write_set(tmp_path, images, annotations), tmp_path)
    flip_only = Augment(flip=1.0, scale=(1.0, 1.0), gain=(1.0, 1.0), noise=0.0)
    plain = DetectionDataset(coco, short=40, long=100, kind="rgb")[0]
    flipped = DetectionDataset(coco, short=40, long=100, kind="rgb", augment=True, augmentation=flip_only)[0]
    torch.testing.assert_close(flipped[1]["boxes"], torch.tensor([[30.0, 4.0, 50.0, 14.0]]))
    torch.testing.assert_close(flipped[0], plain[0].flip(-1))


def _bbox_of_bright(image: torch.Tensor) -> list[float]:
    mask = image[0] > 0.55
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_augmented_boxes_follow_the_object_and_depend_on_seed_epoch_index(tmp_path):
    _png(tmp_path / "a.png", h=80, w=120, rect=(40, 20, 80, 50))
    images = [{"id": "a", "file_name": "a.png", "width": 120, "height": 80}]
    annotations = [{"id": 1, "image_id": "a", "category_id": 1, "bbox": [40, 20, 40, 30]}]
    coco = load_coco(_write_set(tmp_path, images, annotations), tmp_path)
    geometric = Augment(flip=0.5, scale=(0.7, 1.4), gain=(1.0, 1.0), noise=0.0)
    dataset = DetectionDataset(coco, short=80, long=200, kind="rgb", augment=True, augmentation=geometric, seed=3)
    seen = set()
    for epoch in range(8):
        dataset.set_epoch(epoch)
        image, target = dataset[0]
        assert target["boxes"].shape == (1, 4)
        box = target["boxes"][0].tolist()
        np.testing.assert_allclose(box, _bbox_of_bright(image), atol=1.01)  # within a pixel
        seen.add(tuple(round(v, 3) for v in box))
        again = dataset[0]
        assert torch.equal(again[0], image) and torch.equal(again[1]["boxes"], target["boxes"])
    assert len(seen) >= 6  # each epoch draws a new augmentation


def test_photometric_augmentation_and_cache(tmp_path):
    images, annotations = _two_images(tmp_path)
    coco = load_coco(_write_set(tmp_path, images, annotations), tmp_path)
    photometric = Augment(flip=0.0, scale=(1.0, 1.0), gain=(2.0, 2.0), noise=0.0)
    dataset = DetectionDataset(coco, short=20, long=100, kind="rgb", augment=True, augmentation=photometric, cache_items=1)
    image, _ = dataset[0]
    torch.testing.assert_close(image, torch.full_like(image, 0.4), atol=1e-4, rtol=0)  # 0.2 x gain 2
    dataset[1]
    assert list(dataset._cache) == [1]  # bounded LRU
    with pytest.raises(IsplabError, match="unknown dataset kind"):
        DetectionDataset(coco, kind="jpeg")


def test_raw_items_are_genisp_xyz_with_boxes_in_its_pixels(tmp_path):
    rng = np.random.default_rng(0)
    raw = RawImage(mosaic=rng.integers(64, 3000, size=(64, 96)).astype(np.uint16), cfa_pattern="GBRG",
                   black_level=[64] * 4, white_level=4095, as_shot_neutral=[0.5, 1, 0.7],
                   color_matrix=[[0.9, -0.3, -0.1], [-0.4, 1.2, 0.2], [-0.1, 0.2, 0.6]])
    write_dng(tmp_path / "r1.dng", raw)
    write_dng(tmp_path / "r2.dng", raw)
    images = [
        {"id": "r1", "file_name": "r1.dng", "width": 96, "height": 64},
        {"id": "r2", "file_name": "r2.dng", "width": 92, "height": 60},  # a centred crop: 2 px margins
    ]
    annotations = [
        {"id": 1, "image_id": "r1", "category_id": 1, "bbox": [16, 8, 32, 16]},
        {"id": 2, "image_id": "r2", "category_id": 1, "bbox": [14, 6, 32, 16]},
    ]
    coco = load_coco(_write_set(tmp_path, images, annotations), tmp_path)
    dataset = DetectionDataset(coco, short=16, long=100, kind="raw")
    expected, scale = load_raw_xyz(tmp_path / "r1.dng", short=16, long=100)
    assert scale == 0.25
    for index in range(2):
        image, target = dataset[index]
        torch.testing.assert_close(image, torch.from_numpy(expected).permute(2, 0, 1))
        torch.testing.assert_close(target["boxes"], torch.tensor([[4.0, 2.0, 12.0, 6.0]]))
    origin = DetectionDataset(coco, short=16, long=100, kind="raw", frame_anchor="origin")
    torch.testing.assert_close(origin[1][1]["boxes"], torch.tensor([[3.5, 1.5, 11.5, 5.5]]))  # 2 px less
    with pytest.raises(IsplabError, match="frame anchor"):
        DetectionDataset(coco, kind="raw", frame_anchor="middle")
    # raw noise augmentation is relative to the image's level (a dark raw gets dark-raw noise)
    noisy = DetectionDataset(coco, short=16, long=100, kind="raw", augment=True,
                             augmentation=Augment(flip=0.0, scale=(1.0, 1.0), gain=(1.0, 1.0), noise=0.1))
    level = float(np.abs(expected).mean())
    ratios = []
    for epoch in range(8):
        noisy.set_epoch(epoch)
        ratios.append(float((noisy[0][0] - torch.from_numpy(expected).permute(2, 0, 1)).std()) / level)
    assert max(ratios) <= 0.1 * 1.1 and max(ratios) > 0.05
