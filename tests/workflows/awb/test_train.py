from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from isplab.errors import IsplabError
from isplab.models.awb import build_awb_model
from isplab.workflows.awb.dataset import AWBDataset, AWBSample, mired_error
from isplab.workflows.awb.train import (
    RelightTables,
    relight_tables,
    TrainConfig,
    geometric_augment,
    predict,
    relight,
    train_model,
)

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "awb-rpi"
NO_AUGMENT = dict(noise=0.0, lux_noise=0.0, flip=False, rotation=0.0, zoom=0.0, ensemble=1)


def _synthetic(n: int, seed: int = 0, temps: np.ndarray | None = None, sensor: str = "imx708") -> AWBDataset:
    """vc4-sized scenes of random grey-ish albedos lit by an illuminant whose R/G, B/G follow T."""
    rng = np.random.default_rng(seed)
    temps = rng.uniform(2800, 7600, n) if temps is None else np.asarray(temps, dtype=np.float64)
    mired = 1e6 / temps
    gains = np.stack([np.exp((mired - 200) / 150), np.ones(n), np.exp(-(mired - 200) / 150)], axis=1)
    albedo = rng.uniform(0.1, 0.6, (n, 12, 16, 1)) * rng.uniform(0.8, 1.2, (n, 12, 16, 3))
    images = np.clip(albedo * gains[:, None, None, :], 0, 1).astype(np.float32)
    samples = [AWBSample(Path(f"s,{sensor},{i},{t:.0f},400,5000.png"), "s", sensor, str(i), t, 400.0, 5000.0)
               for i, t in enumerate(temps)]
    return AWBDataset(samples, images, np.full(n, 400, np.float32), temps.astype(np.float32),
                      np.full(n, 5000, np.float32), "vc4")


def test_training_reduces_error():
    train, test = _synthetic(96, seed=0), _synthetic(48, seed=1)
    config = TrainConfig(arch="chroma", epochs=25, batch_size=32, lr=5e-3, patience=None, **NO_AUGMENT)
    untrained = build_awb_model("vc4", "chroma")
    before = mired_error(predict(untrained, test.images, test.lux), test.true_temp).mean()
    model = train_model(train, config, progress=False)
    after = mired_error(predict(model, test.images, test.lux), test.true_temp).mean()
    assert not model.training
    assert after < 0.5 * before and after < 25, (before, after)


def test_repeat_weights_are_honoured():
    # Identical images labelled 3000 K and 6000 K: the squared-mired optimum is the weighted mean.
    data = _synthetic(8, temps=[3000] * 4 + [6000] * 4)
    data.images[:] = data.images[0]
    config = TrainConfig(arch="chroma", epochs=60, batch_size=64, lr=3e-3, patience=None, **NO_AUGMENT)
    weights = np.array([9] * 4 + [1] * 4)
    predicted = {}
    for name, w in (("plain", None), ("weighted", weights)):
        model = train_model(data, config, weights=w, progress=False)
        predicted[name] = 1e6 / predict(model, data.images[:1], data.lux[:1])[0]
    expected_plain, expected_weighted = (1e6 / 3000 + 1e6 / 6000) / 2, 0.9 * 1e6 / 3000 + 0.1 * 1e6 / 6000
    assert abs(predicted["plain"] - expected_plain) < 15, predicted
    assert abs(predicted["weighted"] - expected_weighted) < 15, predicted


def test_train_with_validation_set_and_input_model(tmp_path):
    train, val = _synthetic(32, seed=2), _synthetic(16, seed=3)
    config = TrainConfig(arch="reference", epochs=2, batch_size=16, **NO_AUGMENT)
    model = train_model(train, config, run_dir=tmp_path / "run", progress=False, val_dataset=val)
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()
    again = train_model(train, config, input_model=model, progress=False)
    assert again is not model and again.awb_config == model.awb_config


def test_bad_arguments():
    data = _synthetic(4)
    with pytest.raises(IsplabError, match=r"weights must be 4 positive integer repeat counts"):
        train_model(data, TrainConfig(epochs=1), weights=np.array([1, 0, 1, 1]), progress=False)
    with pytest.raises(IsplabError, match="unknown AWB loss 'huber'"):
        train_model(data, TrainConfig(epochs=1, loss="huber"), progress=False)
    with (
        pytest.warns(UserWarning, match="sensor nosuch will not be re-lit"),
        pytest.raises(IsplabError, match="re-lighting needs the sensors' tuning files but none was found for nosuch"),
    ):
        train_model(_synthetic(4, sensor="nosuch"), TrainConfig(epochs=1, relight=30), progress=False)
    with pytest.raises(IsplabError, match="input model is for target 'pisp' but the dataset is 'vc4'"):
        train_model(data, TrainConfig(epochs=1), input_model=build_awb_model("pisp"), progress=False)


def _tables(ccm: np.ndarray) -> RelightTables:
    # One sensor whose CT curve is r = m / 250, b = 250 / m on the relighting mired grid.
    grid = torch.linspace(1e6 / 7600, 1e6 / 2800, 256, dtype=torch.float64)
    curves = torch.stack([grid / 250, 250 / grid], dim=1).float()[None]
    ccm_t = torch.tensor(ccm, dtype=torch.float64)
    mireds = torch.tensor([200.0, 300.0], dtype=torch.float64)
    return RelightTables(
        sensor=torch.zeros(2, dtype=torch.long), ccm=ccm_t.float().expand(2, 3, 3),
        ccm_inv=torch.linalg.inv(ccm_t).float().expand(2, 3, 3),
        rb=torch.stack([mireds / 250, 250 / mireds], 1).float(), curves=curves,
        enabled=torch.tensor([True, False]),
    )


def test_relight_moves_image_and_label_along_the_curve():
    ccm = np.array([[1.6, -0.4, -0.2], [-0.3, 1.5, -0.2], [0.0, -0.5, 1.5]])
    tables = _tables(ccm)
    image = torch.rand(2, 12, 16, 3) * 0.4
    mireds = torch.tensor([200.0, 300.0])
    lit, new = relight(image, mireds, torch.tensor([50.0, 50.0]), torch.tensor([0, 1]), tables)
    grid_step = (1e6 / 2800 - 1e6 / 7600) / 255
    assert abs(new[0].item() - 250.0) <= grid_step / 2 + 1e-3
    assert new[1].item() == 300.0  # sensor without tuning: untouched
    torch.testing.assert_close(lit[1], image[1])
    k = np.array([new[0].item() / 200.0, 1.0, 200.0 / new[0].item()])  # r(T')/r(T), 1, b(T')/b(T)
    cam = image[0].double().numpy() @ np.linalg.inv(ccm).T
    expected = np.clip((cam * k) @ ccm.T, 0, 1)
    np.testing.assert_allclose(lit[0].numpy(), expected, atol=1e-5)


def test_geometric_augment_flip_only_and_identity():
    image = torch.rand(64, 12, 16, 3)
    torch.testing.assert_close(geometric_augment(image, False, 0.0, 0.0), image)
    out = geometric_augment(image, True, 0.0, 0.0)
    flipped = (out == image.flip(2)).flatten(1).all(1)
    same = (out == image).flatten(1).all(1)
    assert (flipped | same).all() and 10 < flipped.sum() < 54
    rotated = geometric_augment(image, False, 0.1, 0.1)
    assert rotated.shape == image.shape and not torch.allclose(rotated, image)


@pytest.mark.shared_data
def test_relight_tables_come_from_the_tuning_files():
    tunings = SHARED / "tunings"
    if not tunings.is_dir():
        pytest.skip("../shared/data/awb-rpi is absent")
    from isplab.workflows.awb.tuning import find_tuning, load_tuning

    data = _synthetic(3, temps=[3000, 4500, 6500])
    data.target = "pisp"
    tables = relight_tables(data, tunings)
    tuning = load_tuning(find_tuning("imx708", "pisp", tunings))
    np.testing.assert_allclose(tables.rb.numpy(), [tuning.gains_at(t) for t in (3000, 4500, 6500)], rtol=1e-5)
    np.testing.assert_allclose(tables.ccm[0].numpy(), tuning.ccm_at(5000.0), rtol=1e-5)
    np.testing.assert_allclose((tables.ccm[0] @ tables.ccm_inv[0]).numpy(), np.eye(3), atol=1e-5)
    assert tables.enabled.all()
    # The tabulated curve at the grid's warm end is the tuning's r, b at 2800 K.
    np.testing.assert_allclose(tables.curves[0, -1].numpy(), tuning.gains_at(2800.0), rtol=1e-4)
