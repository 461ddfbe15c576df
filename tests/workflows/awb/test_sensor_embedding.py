"""Joint training with a sensor embedding (``TrainConfig.sensor_embedding``, ``awb train
--sensor-embedding``), one export per sensor (``awb export --sensor``), and the in-memory
re-weighting loop that ``awb auto-train`` and ``benchmarks/awb_rpi.py --reweight`` share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from isplab.errors import IsplabError
from isplab.io import write_image
from isplab.models.awb import (
    SensorAWB,
    calibrated,
    model_sensors,
    select_sensor,
    with_sensor_embedding,
)
from isplab.workflows.awb.auto_train import auto_train, reweight_loop
from isplab.workflows.awb.dataset import AWBDataset, AWBSample, mired_error
from isplab.workflows.awb.model import build_awb_model, load_awb_model, save_awb_model
from isplab.workflows.awb.predict import load_predictor, predict
from isplab.workflows.awb.train import TrainConfig, train_model

NO_AUGMENT = dict(noise=0.0, lux_noise=0.0, flip=False, rotation=0.0, zoom=0.0, ensemble=1)
#: Sensor "b"'s statistics under a light look like sensor "a"'s under a light this many mireds warmer.
SHIFT_B = 40.0


def _two_sensors(n: int, seed: int) -> AWBDataset:
    """vc4 scenes as in test_train's ``_synthetic``, half of them shot by sensor b, whose colours are
    those of sensor a under a light :data:`SHIFT_B` mireds warmer (no single model can be right for both)."""
    rng = np.random.default_rng(seed)
    temps = rng.uniform(2800, 7600, n)
    sensors = np.array(["a", "b"])[np.arange(n) % 2]
    mired = 1e6 / temps + np.where(sensors == "b", SHIFT_B, 0.0)
    gains = np.stack([np.exp((mired - 200) / 150), np.ones(n), np.exp(-(mired - 200) / 150)], axis=1)
    albedo = rng.uniform(0.1, 0.6, (n, 12, 16, 1)) * rng.uniform(0.8, 1.2, (n, 12, 16, 3))
    images = np.clip(albedo * gains[:, None, None, :], 0, 1).astype(np.float32)
    samples = [AWBSample(Path(f"s,{s},{i},{t:.0f},400,5000.png"), "s", s, str(i), t, 400.0, 5000.0)
               for i, (s, t) in enumerate(zip(sensors, temps))]
    return AWBDataset(samples, images, np.full(n, 400, np.float32), temps.astype(np.float32),
                      np.full(n, 5000, np.float32), "vc4")


def _statistics(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.02, 0.9, (n, 12, 16, 3)).astype(np.float32), rng.uniform(5, 3000, n).astype(np.float32)


def _joint(sensors=("a", "b")) -> tuple[torch.nn.Module, SensorAWB]:
    torch.manual_seed(0)
    net = build_awb_model("vc4", "chroma", width=4, hidden=8, ensemble=2).eval()
    return net, with_sensor_embedding(net, list(sensors)).eval()


def test_untrained_embedding_is_the_identity_and_each_vector_does_what_it_says():
    net, joint = _joint()
    images, lux = _statistics(6)
    plain = predict(net, images, lux)
    np.testing.assert_allclose(predict(joint, images, lux, sensors=["a", "b"] * 3), plain, rtol=1e-6)
    with torch.no_grad():
        joint.log_gain[1] = torch.tensor([np.log(2.0), 0.0, np.log(0.5)])
        joint.log_scale[1] = np.log(1.2)
        joint.offset[1] = 0.4  # x 50 mireds
    b = predict(joint, images, lux, sensors=["b"] * 6)
    scaled = images * np.array([2.0, 1.0, 0.5], np.float32)  # red doubled, blue halved: not swapped, not inverted
    expected = 1.2 * 1e6 / predict(net, scaled, lux) + 20.0
    np.testing.assert_allclose(1e6 / b, expected, rtol=1e-5)
    # Sensor a is untouched by b's vector, and a mixed batch takes each image's own sensor.
    np.testing.assert_allclose(predict(joint, images, lux, sensors=["a"] * 6), plain, rtol=1e-6)
    mixed = predict(joint, images, lux, sensors=["a", "b"] * 3)
    np.testing.assert_allclose(mixed[0::2], plain[0::2], rtol=1e-6)
    np.testing.assert_allclose(mixed[1::2], b[1::2], rtol=1e-6)


def test_selected_sensor_gives_the_two_input_contract_and_unknown_sensors_are_one_line():
    _, joint = _joint()
    with torch.no_grad():
        joint.offset[1] = 0.6
    images, lux = _statistics(4)
    fixed = select_sensor(joint, "b")
    assert model_sensors(fixed) == ["a", "b"] and joint.selected is None  # a copy
    np.testing.assert_allclose(predict(fixed, images, lux), predict(joint, images, lux, sensors=["b"] * 4), rtol=1e-6)
    with pytest.raises(IsplabError, match="trained jointly on sensors a, b: say which sensor"):
        predict(joint, images, lux)
    with pytest.raises(IsplabError, match="unknown sensor imx999: this AWB model was trained jointly on a, b"):
        predict(joint, images, lux, sensors=["a", "imx999", "a", "a"])
    with pytest.raises(IsplabError, match="unknown sensor 'imx999': this AWB model knows a, b"):
        select_sensor(joint, "imx999")
    with pytest.raises(IsplabError, match="no sensor embedding"):
        select_sensor(build_awb_model("vc4", "small"), "a")
    with pytest.raises(IsplabError, match="distinct sensor names"):
        with_sensor_embedding(build_awb_model("vc4", "small"), ["a", "a"])


def test_the_sensor_embedding_wraps_the_hybrid_its_gains_reaching_the_features():
    torch.manual_seed(0)
    net = build_awb_model("vc4", "hybrid", width=4, hidden=8).eval()
    joint = with_sensor_embedding(net, ["a", "b"]).eval()
    with torch.no_grad():
        joint.log_gain[1] = torch.log(torch.tensor([1.2, 1.0, 0.9]))
        joint.log_scale[1] = 0.1
        joint.offset[1] = 0.2
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.uniform(0.02, 0.8, (3, 12, 16, 3)).astype(np.float32))
    lux = torch.tensor([10.0, 100.0, 1000.0])
    with torch.no_grad():
        tinted = 1e6 / net(image * torch.tensor([1.2, 1.0, 0.9]), lux)
        expected = 1e6 / (np.exp(0.1) * tinted + 50.0 * 0.2)
        torch.testing.assert_close(joint(image, lux, torch.tensor([1, 1, 1])), expected, rtol=1e-5, atol=1e-2)
        torch.testing.assert_close(select_sensor(joint, "b")(image, lux), expected, rtol=1e-5, atol=1e-2)
        torch.testing.assert_close(joint(image, lux, torch.tensor([0, 0, 0])), net(image, lux))


def test_save_and_load_keep_the_sensors_and_the_vectors(tmp_path):
    _, joint = _joint(("imx219", "imx708"))
    with torch.no_grad():
        joint.log_gain[0, 2] = 0.3
        joint.offset[1] = -0.2
    model = calibrated(joint, flip=True, scale=0.9, offset=12.0).eval()
    save_awb_model(model, tmp_path / "joint.pt")
    loaded = load_awb_model(tmp_path / "joint.pt")
    assert loaded.awb_config["sensors"] == ["imx219", "imx708"] and model_sensors(loaded) == ["imx219", "imx708"]
    images, lux = _statistics(6)
    names = ["imx219", "imx708"] * 3
    np.testing.assert_allclose(predict(loaded, images, lux, sensors=names), predict(model, images, lux, sensors=names),
                               rtol=1e-6)
    # The .pt path and a loaded predictor take the sensors too.
    np.testing.assert_allclose(predict(tmp_path / "joint.pt", images, lux, sensors=names),
                               load_predictor(tmp_path / "joint.pt")(images, lux, names), rtol=1e-6)
    assert np.abs(predict(loaded, images, lux, sensors=["imx219"] * 6)
                  - predict(loaded, images, lux, sensors=["imx708"] * 6)).min() > 1.0


def test_joint_training_learns_what_tells_the_sensors_apart():
    train, test = _two_sensors(128, seed=0), _two_sensors(64, seed=1)
    config = TrainConfig(arch="chroma", loss="mse", epochs=30, batch_size=32, lr=5e-3, patience=None, **NO_AUGMENT)
    shared = train_model(train, config, progress=False)
    joint = train_model(train, TrainConfig(**{**config.__dict__, "sensor_embedding": True}), progress=False)
    assert model_sensors(joint) == ["a", "b"]
    names = [s.sensor for s in test.samples]
    shared_error = mired_error(predict(shared, test.images, test.lux), test.true_temp).mean()
    joint_error = mired_error(predict(joint, test.images, test.lux, sensors=names), test.true_temp).mean()
    assert joint_error < 0.3 * shared_error, (shared_error, joint_error)
    # The same statistics read as sensor b's are a light SHIFT_B mireds cooler than read as sensor a's.
    as_a = 1e6 / predict(joint, test.images, test.lux, sensors=["a"] * len(test))
    as_b = 1e6 / predict(joint, test.images, test.lux, sensors=["b"] * len(test))
    assert -SHIFT_B - 8 < float(np.median(as_b - as_a)) < -SHIFT_B + 8, np.median(as_b - as_a)


def test_fine_tuning_a_joint_model_keeps_its_sensors_and_refuses_new_ones():
    data = _two_sensors(16, seed=2)
    config = TrainConfig(arch="small", epochs=1, batch_size=8, sensor_embedding=True, **NO_AUGMENT)
    joint = train_model(data, config, progress=False, sensors=["a", "b", "c"])  # c: no images, identity
    assert model_sensors(joint) == ["a", "b", "c"]
    assert float(joint.log_gain[2].abs().max()) == 0.0 and float(joint.offset[2]) == 0.0
    # A shared model given an embedding (awb train --model shared.pt --sensor-embedding) starts from it.
    shared = train_model(data, TrainConfig(arch="small", epochs=1, batch_size=8, **NO_AUGMENT), progress=False)
    frozen = TrainConfig(arch="small", epochs=1, batch_size=8, lr=0.0, sensor_embedding=True, **NO_AUGMENT)
    wrapped = train_model(data, frozen, input_model=shared, progress=False)
    assert model_sensors(wrapped) == ["a", "b"]
    np.testing.assert_allclose(predict(wrapped, data.images, data.lux, sensors=[s.sensor for s in data.samples]),
                               predict(shared, data.images, data.lux), rtol=1e-6)
    only_a = data.subset([i for i, s in enumerate(data.samples) if s.sensor == "a"])
    tuned = train_model(only_a, TrainConfig(arch="small", epochs=1, batch_size=8, **NO_AUGMENT), input_model=joint,
                        progress=False)
    assert model_sensors(tuned) == ["a", "b", "c"]
    other = AWBDataset([AWBSample(Path("s,d,0,5000,400,5000.png"), "s", "d", "0", 5000.0, 400.0, 5000.0)],
                       data.images[:1], data.lux[:1], data.true_temp[:1], data.camera_temp[:1], "vc4")
    with pytest.raises(IsplabError, match="unknown sensor d: this AWB model was trained jointly on a, b, c"):
        train_model(other, TrainConfig(arch="small", epochs=1, **NO_AUGMENT), input_model=joint, progress=False)


def test_reweight_loop_counts_the_worst_image_and_returns_the_best_run():
    data = _two_sensors(24, seed=3)
    config = TrainConfig(arch="small", epochs=2, batch_size=8, **NO_AUGMENT)
    runs = []
    best = reweight_loop(data, config, iterations=3, weight=5, early_stopping=None, later_epochs=1,
                         progress=False, on_run=runs.append)
    assert [r.run for r in runs] == [0, 1, 2]
    assert best is min(runs, key=lambda r: (r.worst, r.mean))
    # Each run adds 5 inclusions to the image that run got most wrong (counts are total inclusions).
    counts: dict[str, int] = {}
    for run in runs:
        prefix = data.samples[run.worst_index].prefix
        counts[prefix] = counts.get(prefix, 1) + 5
        assert run.duplicates == counts
        assert run.worst == pytest.approx(float(run.errors.max()))
        expected = mired_error(predict(run.model, data.images, data.lux), data.true_temp)
        np.testing.assert_allclose(run.errors, expected, rtol=1e-6)


def test_reweight_loop_stops_early_and_auto_train_writes_what_it_returns(tmp_path):
    data = _two_sensors(16, seed=4)
    config = TrainConfig(arch="small", epochs=1, batch_size=8, lr=0.0, **NO_AUGMENT)  # every run is the same model
    runs = []
    reweight_loop(data, config, iterations=10, early_stopping=2, progress=False, on_run=runs.append)
    assert len(runs) == 3  # the first, then 2 without a better worst case
    result = auto_train(data, tmp_path / "auto", config, iterations=2, early_stopping=None, progress=False)
    assert [r.run for r in result.runs] == [0, 1]
    for record in result.runs:
        assert record.model_path.is_file() and record.verification_path.is_file()
        first = record.verification_path.read_text().splitlines()[0].split()
        assert first == [record.worst_image, f"{record.worst:.2f}"]


# --- the command line ---------------------------------------------------------------------------



def _error_line(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


def test_cli_trains_a_joint_model_and_exports_it_per_sensor(monkeypatch, capsys, tmp_path, awb_cli):
    pytest.importorskip("litert_torch")
    data = _two_sensors(12, seed=5)
    (tmp_path / "ds").mkdir()
    for sample, image in zip(data.samples, data.images):
        write_image(tmp_path / "ds" / sample.path.name, np.round(image * 65535).astype(np.uint16))
    fast = ["--epochs", "1", "--ensemble", "1", "--arch", "small", "--device", "cpu", "--no-progress"]
    code, _, err = awb_cli(tmp_path, "train", "ds", "joint.pt", "-t", "vc4", "--sensor-embedding", *fast)
    assert code == 0, err
    model = load_awb_model(tmp_path / "joint.pt")
    assert model_sensors(model) == ["a", "b"]
    with torch.no_grad():  # one epoch moves the vectors little: make b's visibly different
        model.offset[1] += 0.5
    save_awb_model(model, tmp_path / "joint.pt")
    line = _error_line(*awb_cli(tmp_path, "export", "joint.pt")[::2])
    assert "joint.pt was trained jointly on sensors a, b: give --sensor S" in line
    line = _error_line(*awb_cli(tmp_path, "export", "joint.pt", "--sensor", "imx999")[::2])
    assert "unknown sensor 'imx999': this AWB model knows a, b" in line
    assert not list(tmp_path.glob("*.tflite"))
    images, lux = _statistics(5)
    for sensor in ("a", "b"):
        code, out, err = awb_cli(tmp_path, "export", "joint.pt", "--sensor", sensor)
        assert code == 0, err
        exported = predict(tmp_path / f"joint_{sensor}.tflite", images, lux)
        np.testing.assert_allclose(1e6 / exported, 1e6 / predict(model, images, lux, sensors=[sensor] * 5), atol=1.0)
    # Each file has its own sensor's vector baked in: b's offset is 25 mireds above a's.
    a, b = (1e6 / predict(tmp_path / f"joint_{s}.tflite", images, lux) for s in "ab")
    assert np.abs(b - a).min() > 15
    # evaluate --model scores each image with its own sensor's vector.
    code, out, err = awb_cli(tmp_path, "evaluate", "ds", "-m", "joint.pt", "-o", "report")
    assert code == 0, err
    import csv

    with (tmp_path / "report" / "errors.csv").open() as handle:
        reported = {row["file"]: float(row["predicted_temp"]) for row in csv.DictReader(handle)}
    stored = load_awb_model(tmp_path / "joint.pt")
    for sample, image in zip(data.samples, data.images):
        own = predict(stored, image[None], np.array([400.0], np.float32), sensors=[sample.sensor])[0]
        assert reported[sample.path.name] == pytest.approx(own, abs=0.5)
    line = _error_line(*awb_cli(tmp_path, "export", "joint.pt", "--sensor", "a")[::2])
    assert "already exists" in line


# --- the benchmark's CV modes ---------------------------------------------------------------------


@pytest.mark.slow
def test_benchmark_modes_score_the_same_folds_as_cross_validate(tmp_path):
    import importlib.util

    from rich.console import Console

    from isplab.workflows.awb.dataset import load_dataset
    from isplab.workflows.awb.evaluate import cross_validate

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "awb_rpi.py"
    spec = importlib.util.spec_from_file_location("awb_rpi_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    data = _two_sensors(24, seed=6)
    folder = tmp_path / "vc4" / "train"
    folder.mkdir(parents=True)
    for i, (sample, image) in enumerate(zip(data.samples, data.images)):
        # 8 scenes (user,id) shot by both sensors: folds must keep them together.
        name = f"u,{sample.sensor},{i // 2},{sample.true_temp:.0f},400,5000.png"
        write_image(folder / name, np.round(image * 65535).astype(np.uint16))
    config = TrainConfig(arch="small", epochs=2, batch_size=8, device="cpu", **NO_AUGMENT)
    console = Console(quiet=True)
    reference = cross_validate(load_dataset(folder, "vc4"), 2, config).model.mean

    result = bench.per_sensor_results("vc4", tmp_path, config, 2, 1, 4, console, joint="finetune")
    rows = result["sensors"]
    assert {name: row["images"] for name, row in rows.items()} == {"a": 12, "b": 12, "all": 24}
    assert rows["all"]["shared"]["mean"] == pytest.approx(reference, rel=1e-5)
    for name in ("per_sensor", "joint"):
        assert rows["all"][name]["mean"] != pytest.approx(reference, rel=1e-5)  # they did change the models
        # The overall mean is the image-weighted mean of the sensors' means.
        assert rows["all"][name]["mean"] == pytest.approx((rows["a"][name]["mean"] + rows["b"][name]["mean"]) / 2)

    reweighted = bench.reweight_results("vc4", tmp_path, config, 2, 2, 4, 1, console)
    assert reweighted["plain"]["mean"] == pytest.approx(reference, rel=1e-5)  # run 0 is the plain model
    assert len(reweighted["picked_runs"]) == 2 and set(reweighted["picked_runs"]) <= {0, 1}
    # The control (the plain model trained on without duplicates) is another model again.
    assert reweighted["continued"]["mean"] != pytest.approx(reference, rel=1e-5)


def test_verify_scores_each_file_with_its_own_sensor(tmp_path):
    """``awb verify`` on a joint model: the sensor in each file name picks its vector."""
    from isplab.workflows.awb.verify import verify

    net, joint = _joint()
    with torch.no_grad():
        joint.offset[1] = 0.4  # sensor b reads 20 mireds warmer than a
    path = save_awb_model(joint, tmp_path / "joint.pt")
    images, _ = _statistics(2)
    files = []
    for sensor, image in zip(("a", "b"), images):
        files.append(tmp_path / f"u,{sensor},1,5000,100,5000.png")
        write_image(files[-1], np.round(image * 65535).astype(np.uint16))
    rows = verify(files, path)
    assert all(row.failure is None for row in rows), [row.failure for row in rows]
    stored = np.stack([np.round(image * 65535) / 65535 for image in images]).astype(np.float32)
    plain = predict(net, stored, np.full(2, 100, np.float32))
    np.testing.assert_allclose(1e6 / rows[0].predicted_temp, 1e6 / plain[0], rtol=1e-5)
    np.testing.assert_allclose(1e6 / rows[1].predicted_temp, 1e6 / plain[1] + 20.0, rtol=1e-5)
