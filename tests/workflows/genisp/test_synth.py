"""``genisp synth``: files, COCO annotations, camera raws (darkening, noise), splits, shards, safety."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from isplab.data.unprocess import illuminant_neutral, unprocess
from isplab.errors import IsplabError
from isplab.io.image import read_image
from isplab.io.raw import read_raw
from isplab.isp.color import camera_to_srgb_matrix
from isplab.workflows.genisp.data import DetectionDataset, load_coco
from isplab.workflows.genisp.synth import (
    CAMERAS,
    DARKENING,
    _overlap,
    render_scene,
    split_of,
    synthesize,
)

SIZE = (160, 120)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    return synthesize(out, count=5, seed=3, size=SIZE)


def test_writes_every_file_and_annotations_load(dataset):
    out = dataset.out_dir
    assert not dataset.failures and len(dataset.images) == 5
    assert dataset.manifest == out / "manifest.json"
    ids = [r["id"] for r in dataset.images]
    assert ids == [f"img{i:05d}" for i in range(5)]
    for name in ("normal", "cam-a", "cam-b"):
        boxes = {}
        for split in ("train", "val", "test"):
            coco = load_coco(out / "annotations" / f"{name}_{split}.json", out)
            assert coco.categories == {1: "person", 2: "bicycle", 3: "car"}
            boxes.update({im.file_id: im.boxes.tolist() for im in coco.images})
            assert {dataset.images[ids.index(im.file_id)]["split"] for im in coco.images} <= {split}
        assert sorted(boxes) == ids  # every image in exactly one split
        for record in dataset.images:
            assert boxes[record["id"]] == [o["box"] for o in record["objects"]]
    normal = read_image(out / "normal" / "img00000.png")
    assert normal.dtype == np.uint8 and normal.shape == (120, 160, 3)
    assert (out / "normal" / "img00000.png").is_file() and (out / "raw" / "cam-b" / "img00004.dng").is_file()


def test_boxes_are_the_tight_boxes_of_the_drawn_objects(monkeypatch):
    # on a plain background every changed pixel belongs to an object: the boxes must cover them
    # (up to the 1-pixel antialiased rim) and each box edge must touch one
    from isplab.workflows.genisp import synth

    monkeypatch.setattr(synth, "load_source", lambda name, size, rng: np.full((size[1], size[0], 3), [0.5, 0.0, 0.5], np.float32))
    for index in range(6):
        srgb, objects, _ = render_scene(index, 11, (200, 150))
        assert 1 <= len(objects) <= 4
        colours, counts = np.unique(srgb.reshape(-1, 3), axis=0, return_counts=True)
        background = colours[counts.argmax()]  # the (randomly dimmed) plain background
        changed = np.abs(srgb - background).max(axis=2) > 0.05
        covered = np.zeros_like(changed)
        for obj in objects:
            x1, y1, x2, y2 = (int(v) for v in obj["box"])
            assert obj["box"] == [float(v) for v in (x1, y1, x2, y2)]
            assert 0 <= x1 < x2 <= 200 and 0 <= y1 < y2 <= 150
            assert obj["category"] == {1: "person", 2: "bicycle", 3: "car"}[obj["label"]]
            covered[max(0, y1 - 1) : y2 + 1, max(0, x1 - 1) : x2 + 1] = True
            assert all(_overlap(obj["box"], other["box"]) < 0.3 for other in objects if other is not obj)
            inside = changed[y1:y2, x1:x2]
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        assert not (changed & ~covered).any()
    again = render_scene(5, 11, (200, 150))
    np.testing.assert_array_equal(again[0], srgb)


def test_raws_are_darkened_by_the_recorded_factor_with_the_camera_noise(dataset):
    record = dataset.images[0]
    srgb, _, _ = render_scene(0, 3, SIZE)
    for camera, info in record["cameras"].items():
        spec = CAMERAS[camera]
        raw = read_raw(dataset.out_dir / "raw" / camera / f"{record['id']}.dng")
        assert raw.cfa_pattern == spec.pattern and raw.white_level == spec.white_level
        np.testing.assert_allclose(raw.black_level, [spec.black_level] * 4)
        np.testing.assert_allclose(raw.color_matrix, spec.xyz_to_camera, atol=1e-5)
        neutral = illuminant_neutral(spec.xyz_to_camera, record["illuminant_cct"])
        np.testing.assert_allclose(raw.as_shot_neutral, neutral / neutral[1], rtol=1e-5)
        assert 2500 <= record["illuminant_cct"] <= 7500
        darkening = info["darkening"]
        assert DARKENING[0] <= darkening <= DARKENING[1]
        ccm = camera_to_srgb_matrix(torch.from_numpy(spec.xyz_to_camera)).float()[None]
        clean = unprocess(torch.from_numpy(srgb).permute(2, 0, 1)[None], ccm,
                          torch.tensor(1 / neutral, dtype=torch.float32)[None], torch.ones(1), spec.pattern,
                          safe_highlights=False)[0, 0].numpy().astype(np.float64) * darkening
        measured = (raw.mosaic.astype(np.float64) - spec.black_level) / (spec.white_level - spec.black_level)
        keep = clean < 0.9 * darkening  # not clipped at normal exposure
        assert measured[keep].mean() == pytest.approx(clean[keep].mean(), rel=0.02)
        residual = measured[keep] - clean[keep]
        predicted = spec.shot_noise * clean[keep].mean() + spec.read_noise
        quantisation = 1 / 12 / (spec.white_level - spec.black_level) ** 2
        assert residual.var() == pytest.approx(predicted + quantisation, rel=0.1)


def test_cameras_differ_in_matrix_pattern_and_noise_and_match_the_documented_table():
    from isplab.workflows.genisp import synth

    rows = [line.split() for line in synth.__doc__.splitlines() if line.startswith("cam-")]
    assert len(rows) == len(CAMERAS)
    for name, pattern, *matrix_of, black, white, shot, read, iso in rows:
        spec = CAMERAS[name]
        assert (pattern, " ".join(matrix_of), int(black), int(white), float(shot), float(read), int(iso)) == (
            spec.pattern, spec.matrix_of, spec.black_level, spec.white_level, spec.shot_noise, spec.read_noise, spec.iso)
    a, b = CAMERAS["cam-a"], CAMERAS["cam-b"]
    assert a.pattern != b.pattern and not np.allclose(a.xyz_to_camera, b.xyz_to_camera)
    assert b.shot_noise > a.shot_noise and b.read_noise > a.read_noise


def test_splits_are_by_image_stable_and_close_to_the_fractions():
    splits = (("train", 0.6), ("val", 0.2), ("test", 0.2))
    names = [split_of(i, 0, splits) for i in range(100)]
    assert abs(names.count("train") - 60) <= 3 and abs(names.count("val") - 20) <= 3
    assert names[:10] == [split_of(i, 0, splits) for i in range(10)]
    assert names != [split_of(i, 1, splits) for i in range(100)]


def test_raw_images_feed_the_detection_dataset(dataset):
    coco = load_coco(dataset.annotations[("cam-a", "train")], dataset.out_dir)
    image, target = DetectionDataset(coco, short=60, long=80, kind="raw")[0]
    assert image.shape == (3, 60, 80)
    record = next(r for r in dataset.images if r["id"] == coco.images[0].file_id)
    expected = torch.tensor([o["box"] for o in record["objects"]]) / 2  # 160x120 sensor -> 80x60
    torch.testing.assert_close(target["boxes"], expected)


def test_refuses_an_existing_dataset_and_overwrite_replaces_only_its_files(tmp_path):
    out = tmp_path / "ds"
    synthesize(out, count=2, size=(96, 64), cameras=("cam-a",))
    (out / "notes.txt").write_text("mine")
    with pytest.raises(IsplabError, match="already holds .*--overwrite"):
        synthesize(out, count=2, size=(96, 64), cameras=("cam-a",))
    result = synthesize(out, count=1, size=(96, 64), cameras=("cam-b",), overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "raw" / "cam-a").exists() and not (out / "normal" / "img00001.png").exists()
    assert len(result.images) == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"count": 0}, "--count"),
        ({"cameras": ("cam-z",)}, "bad cameras"),
        ({"splits": (("train", 0.5), ("test", 0.2))}, "sum to 1"),
        ({"size": (63, 64)}, "bad --size"),
        ({"shard": (3, 2)}, "bad shard"),
    ],
)
def test_bad_settings_are_refused_before_writing(tmp_path, kwargs, message):
    with pytest.raises(IsplabError, match=message):
        synthesize(tmp_path / "ds", **{"count": 2, **kwargs})
    assert not (tmp_path / "ds").exists()


@pytest.mark.slow
def test_shards_and_workers_make_the_same_dataset(tmp_path):
    settings = {"count": 4, "seed": 5, "size": (96, 64)}
    synthesize(tmp_path / "whole", workers=2, **settings)
    first = synthesize(tmp_path / "sharded", shard=(1, 2), **settings)
    assert first.manifest is None and len(first.images) == 2  # waits for the other shard
    with pytest.raises(IsplabError, match="already holds"):
        synthesize(tmp_path / "sharded", shard=(2, 2), count=4, seed=6, size=(96, 64))  # other settings
    second = synthesize(tmp_path / "sharded", shard=(2, 2), **settings)
    assert second.manifest is not None
    for relative in ("annotations/cam-b_test.json", "annotations/normal_train.json", "normal/img00003.png",
                     "raw/cam-a/img00002.dng"):
        assert (tmp_path / "whole" / relative).read_bytes() == (tmp_path / "sharded" / relative).read_bytes()
    merged = json.loads((tmp_path / "sharded" / "manifest.json").read_text())
    assert [r["index"] for r in merged["images"]] == [0, 1, 2, 3]
    with pytest.raises(IsplabError, match="already holds"):
        synthesize(tmp_path / "sharded", shard=(1, 2), **settings)
