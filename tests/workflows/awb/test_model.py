from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from isplab.errors import IsplabError
from isplab.models.awb import AWBEnsemble, chroma_features, log_chroma_histogram, reference_features
from isplab.workflows.awb.model import build_awb_model, load_awb_model, save_awb_model

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "awb-rpi"
SIZES = {"pisp": (32, 32), "vc4": (12, 16)}
CONFIGS = [("reference", {}), ("chroma", {}), ("histogram", {}), ("chroma", {"ensemble": 2})]


def _inputs(target: str, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    height, width = SIZES[target]
    return torch.rand(batch, height, width, 3, generator=g), 10 ** (torch.rand(batch, generator=g) * 4)


@pytest.mark.parametrize("target", ["pisp", "vc4"])
@pytest.mark.parametrize(("arch", "options"), CONFIGS)
@pytest.mark.parametrize("batch", [1, 5])
def test_contract_nhwc_kelvin_in_range(target, arch, options, batch):
    model = build_awb_model(target, arch, **options).eval()
    image, lux = _inputs(target, batch)
    with torch.no_grad():
        out = model(image, lux)
        single = model(image[:1], lux[:1])
    assert out.shape == (batch,) and out.dtype == torch.float32
    assert ((out >= 2800 - 1e-2) & (out <= 7600 + 1e-2)).all()
    torch.testing.assert_close(single, out[:1], rtol=1e-5, atol=1e-3)  # batch-independent


def test_reference_layer_shapes_match_published_models():
    # Parameter counts of Raspberry Pi's model_pisp.tflite / model_vc4.tflite: valid 3x3 convs,
    # flatten 4x4x64 = 1024 (PiSP) and 3x5x64 = 960 (VC4) straight into the 10-class dense layer.
    pisp, vc4 = build_awb_model("pisp"), build_awb_model("vc4")
    assert pisp.dense.in_features == 1024 and vc4.dense.in_features == 960
    assert sum(p.numel() for p in pisp.parameters()) == 448 + 4640 + 18496 + 10250
    assert sum(p.numel() for p in vc4.parameters()) == 896 + 18496 + 9610


def _numpy_reference_features(image: np.ndarray, lux: np.ndarray) -> np.ndarray:
    g = np.clip(image[..., 1], 0.1, 1)
    r = (np.log(np.clip(image[..., 0] / g, 0.01, 1)) + 1) / 2
    b = (np.log(np.clip(image[..., 2] / g, 0.01, 1)) + 1) / 2
    light = np.broadcast_to((np.log(lux) / 10)[:, None, None], g.shape)
    return np.clip(np.stack([r, light, b], -1), 0, 1)


def test_reference_features_match_numpy_formula():
    image, lux = _inputs("vc4", 4, seed=2)
    image = image * 1.2  # values slightly above 1 happen at run time
    expected = _numpy_reference_features(image.double().numpy(), lux.double().numpy())
    np.testing.assert_allclose(reference_features(image, lux).numpy(), expected, atol=1e-6)
    assert 0 < expected[..., 0].mean() < 0.5  # the test exercises unclipped values too


def test_chroma_features_match_numpy_formula():
    image, _ = _inputs("vc4", 3, seed=4)
    x = np.clip(image.double().numpy(), 3.4e-4, 1)
    expected = np.stack(
        [np.clip(np.log(x[..., 0] / x[..., 1]), -4, 4) / 2, np.clip(np.log(x[..., 2] / x[..., 1]), -4, 4) / 2,
         np.log(x[..., 1]) / 8], axis=1)
    np.testing.assert_allclose(chroma_features(image).numpy(), expected, atol=1e-5)


def test_log_chroma_histogram_matches_numpy_histogram():
    # Zones placed exactly on bin centres: the soft histogram equals a hard weighted one.
    rng = np.random.default_rng(0)
    centres = np.linspace(-1.5, 1.5, 16)
    iu, iv = rng.integers(0, 16, (2, 2, 12, 16))
    green = rng.uniform(0.002, 0.5, (2, 12, 16))
    image = np.stack([green * np.exp(centres[iu]), green, green * np.exp(centres[iv])], axis=-1)
    image[0, 0, 0] = [0.99, 0.5, 0.3]  # saturated zone: ignored
    usable = image.max(-1) < 0.98
    weight = np.clip((green - 0.001) / 0.019, 0, 1) * usable
    expected = np.zeros((2, 16, 16))
    for b in range(2):
        np.add.at(expected[b], (iu[b], iv[b]), weight[b])
    expected = np.sqrt(expected / expected.sum(axis=(1, 2), keepdims=True) + 1e-8)
    got = log_chroma_histogram(torch.from_numpy(image).float(), bins=16, extent=1.5)
    assert got.shape == (2, 1, 16, 16)
    np.testing.assert_allclose(got[:, 0].numpy(), expected, atol=1e-3)


@pytest.mark.parametrize(("arch", "options"), CONFIGS)
def test_save_load_round_trip(tmp_path, arch, options):
    model = build_awb_model("vc4", arch, **options).eval()
    path = save_awb_model(model, tmp_path / "m.pt")
    loaded = load_awb_model(path)
    assert isinstance(loaded, AWBEnsemble) == ("ensemble" in options)
    image, lux = _inputs("vc4", 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image, lux), model(image, lux))


def test_load_rejects_non_model_files(tmp_path):
    (tmp_path / "junk.pt").write_text("not a model")
    with pytest.raises(IsplabError, match=r"junk.pt' is not an isplab AWB model"):
        load_awb_model(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(IsplabError, match=r"other.pt' is not an isplab AWB model"):
        load_awb_model(tmp_path / "other.pt")
    with pytest.raises(IsplabError, match="does not exist"):
        load_awb_model(tmp_path / "missing.pt")


def test_wrong_target_and_bad_arguments():
    model = build_awb_model("pisp")
    image, lux = _inputs("vc4", 1)
    with pytest.raises(IsplabError, match=r"32 wide x 32 high zones expects image \(B, 32, 32, 3\).*got \(1, 12, 16, 3\)"):
        model(image, lux)
    with pytest.raises(IsplabError, match=r"expects image.*got \(1, 3, 32, 32\)"):
        model(torch.rand(1, 3, 32, 32), torch.ones(1))
    with pytest.raises(IsplabError, match="unknown AWB target 'pi3'"):
        build_awb_model("pi3")
    with pytest.raises(IsplabError, match="unknown AWB arch 'resnet'"):
        build_awb_model("vc4", "resnet")
    with pytest.raises(IsplabError, match="bad options"):
        build_awb_model("vc4", "reference", depth=3)


def _tflite_weights(path: Path) -> list[np.ndarray]:
    """The published model's constant tensors, int8 ones dequantised per output channel."""
    interpreter_module = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = interpreter_module.Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    weights = []
    for detail in interpreter.get_tensor_details():
        if detail["name"].startswith(("arith.constant", "tfl.pseudo_qconst")):
            value = interpreter.get_tensor(detail["index"])
            if value.dtype == np.int8:
                scales = detail["quantization_parameters"]["scales"]
                value = value.astype(np.float32) * scales.reshape(-1, *([1] * (value.ndim - 1)))
            weights.append(value)
    return weights


# Mean mired error of the published models on their 571 training images (measured 2.79 PiSP, 3.25 VC4).
MEAN_ON_TRAINING_DATA = {"pisp": 3.0, "vc4": 3.5}


@pytest.mark.shared_data
@pytest.mark.filterwarnings("ignore:.*experimental_preserve_all_tensors")
@pytest.mark.parametrize("target", ["pisp", "vc4"])
def test_reference_arch_reproduces_published_model(target):
    """Raspberry Pi's own weights in our reference network give the published TFLite's outputs on
    every one of its 571 training images: within 1 mired (measured 0.53 PiSP, 0.86 VC4; the published
    model computes with int8 weights, our copy with the same weights in float32)."""
    path = SHARED / "reference-models" / f"model_{target}.tflite"
    if not path.is_file():
        pytest.skip("../shared/data/awb-rpi is absent")
    from isplab.export.tflite import TFLiteRunner
    from isplab.workflows.awb.dataset import load_dataset, mired_error

    model = build_awb_model(target).eval()
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    for value in _tflite_weights(path):
        for conv in convs:
            if value.shape == (conv.out_channels, 3, 3, conv.in_channels):  # TFLite OHWI
                conv.weight.data = torch.from_numpy(value.transpose(0, 3, 1, 2).copy())
            elif value.shape == (conv.out_channels,):
                conv.bias.data = torch.from_numpy(value.copy())
        if value.shape == tuple(model.dense.weight.shape):
            model.dense.weight.data = torch.from_numpy(value.copy())
        elif value.shape == (10,) and not np.allclose(value, np.linspace(2800, 7600, 10)):
            model.dense.bias.data = torch.from_numpy(value.copy())
    dataset = load_dataset(SHARED / target / "train", target)
    assert len(dataset) == 571
    with torch.no_grad():  # all images in one batch
        ours = model(torch.from_numpy(dataset.images), torch.from_numpy(dataset.lux)).numpy()
    runner = TFLiteRunner(path)  # one interpreter; batch 1 as libcamera runs it
    theirs = np.array([runner([image[None], np.array([lux], np.float32)])[0][0]
                       for image, lux in zip(dataset.images, dataset.lux)])
    assert mired_error(ours, theirs).max() < 1.0
    assert mired_error(ours, dataset.true_temp).mean() < MEAN_ON_TRAINING_DATA[target]  # it is the trained model


@pytest.mark.slow
@pytest.mark.parametrize("target", ["vc4"])
def test_converts_to_tflite_with_libcamera_contract(tmp_path, target):
    pytest.importorskip("litert_torch")
    from isplab.export import export_tflite, tflite_signature

    model = build_awb_model(target, "chroma", ensemble=2).eval()
    image, lux = _inputs(target, 1)
    result = export_tflite(model, (image, lux), tmp_path / "awb.tflite", atol=0.5, rtol=1e-4)
    signature = tflite_signature(result.path)
    assert [s.shape for s in signature.inputs] == [(1, *SIZES[target], 3), (1,)]
    assert [s.shape for s in signature.outputs] == [(1,)]
    assert all(s.dtype == np.float32 for s in signature.inputs + signature.outputs)
