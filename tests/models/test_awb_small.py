"""The small AWB network (``arch="small"``): its computation, its size, and its TFLite export."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from isplab.errors import IsplabError
from isplab.models.awb import ARCHS, SmallAWBNet, build_awb_net
from isplab.workflows.awb.model import build_awb_model

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "awb-rpi"
RANGE = (2800.0, 7600.0)


def expected_parameters(width: int, hidden: int) -> int:
    """Parameters of SmallAWBNet by hand: full 3x3 conv, two depthwise-separable blocks, head."""
    w, w2 = width, 2 * width
    conv = 3 * w * 9 + w
    block1 = (w * 9 + w) + (w * w2 + w2)
    block2 = (w2 * 9 + w2) + (w2 * w2 + w2)
    head = (2 * w2 + 1) * hidden + hidden + hidden + 1
    return conv + block1 + block2 + head


@pytest.mark.parametrize(("width", "hidden"), [(16, 32), (8, 16), (24, 64)])
def test_parameter_count_is_the_depthwise_separable_design(width, hidden):
    net = build_awb_net("small", (12, 16), RANGE, width=width, hidden=hidden)
    assert sum(p.numel() for p in net.parameters()) == expected_parameters(width, hidden)


def test_default_small_net_is_far_smaller_than_the_reference():
    small = build_awb_model("pisp", "small")
    reference = build_awb_model("pisp", "reference")
    count = sum(p.numel() for p in small.parameters())
    assert count == expected_parameters(16, 32) == 4673
    assert count * 4 <= 50 * 1024  # float32 weights within the issue's ~50 KB budget
    assert count * 7 < sum(p.numel() for p in reference.parameters())
    assert "small" in ARCHS and build_awb_model("vc4", "small").awb_config["arch"] == "small"


def manual_mireds(net: SmallAWBNet, image: torch.Tensor, lux: torch.Tensor) -> torch.Tensor:
    """The small net written out with functional ops and its own weights, independently of its modules."""
    conv0, dw1, pw1, dw2, pw2 = (m for m in net.features if isinstance(m, torch.nn.Conv2d))
    lin1, lin2 = (m for m in net.head if isinstance(m, torch.nn.Linear))
    x = image.permute(0, 3, 1, 2)
    if image.shape[1] > 16:
        x = F.avg_pool2d(x, 2)
    rgb = x.clamp(3.4e-4, 1.0).log()
    feats = torch.stack([
        (rgb[:, 0] - rgb[:, 1]).clamp(-4, 4) / 2, (rgb[:, 2] - rgb[:, 1]).clamp(-4, 4) / 2, rgb[:, 1] / 8,
    ], 1)
    x = F.relu(F.conv2d(feats, conv0.weight, conv0.bias, padding=1))
    x = F.conv2d(x, dw1.weight, dw1.bias, padding=1, groups=x.shape[1])
    x = F.relu(F.conv2d(x, pw1.weight, pw1.bias))
    x = F.max_pool2d(x, 2)
    x = F.conv2d(x, dw2.weight, dw2.bias, padding=1, groups=x.shape[1])
    x = F.relu(F.conv2d(x, pw2.weight, pw2.bias))
    pooled = torch.cat([x.mean((2, 3)), x.amax((2, 3)), (lux.clamp(min=1).log() / 10)[:, None]], 1)
    z = F.linear(F.relu(F.linear(pooled, lin1.weight, lin1.bias)), lin2.weight, lin2.bias)[:, 0]
    low, high = 1e6 / RANGE[1], 1e6 / RANGE[0]
    return low + (high - low) * torch.sigmoid(z)


@pytest.mark.parametrize("size", [(32, 32), (12, 16)])
def test_small_net_computes_its_documented_function(size):
    torch.manual_seed(3)
    net = build_awb_net("small", size, RANGE, width=8, hidden=16).eval()
    generator = torch.Generator().manual_seed(4)
    image = torch.rand(5, *size, 3, generator=generator) * 0.9 + 0.01
    image[0, :, :, 0] *= 0.2  # a strongly tinted image, so swapped channels change the answer
    lux = torch.tensor([3.0, 40.0, 400.0, 1500.0, 0.5])
    with torch.no_grad():
        got = net.mireds(image, lux)
        want = manual_mireds(net, image, lux)
        kelvin = net(image, lux)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(kelvin, 1e6 / want, rtol=1e-5, atol=1e-2)
    assert ((kelvin >= RANGE[0] - 1e-3) & (kelvin <= RANGE[1] + 1e-3)).all()


def test_small_net_prediction_is_bounded_for_extreme_inputs():
    net = build_awb_model("vc4", "small", ensemble=2).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(50.0)  # saturate the sigmoid
        image = torch.stack([torch.zeros(12, 16, 3), torch.ones(12, 16, 3), torch.rand(12, 16, 3)])
        kelvin = net(image, torch.tensor([0.0, 1e6, 100.0]))
    assert torch.isfinite(kelvin).all()
    assert ((kelvin >= RANGE[0] - 1e-2) & (kelvin <= RANGE[1] + 1e-2)).all()


def test_small_net_refuses_bad_options_and_input():
    with pytest.raises(IsplabError, match="bad options"):
        build_awb_net("small", (12, 16), RANGE, filters=(8, 16))
    net = build_awb_net("small", (12, 16), RANGE)
    with pytest.raises(IsplabError, match=r"expects image \(B, 12, 16, 3\)"):
        net(torch.rand(1, 32, 32, 3), torch.ones(1))


def _latency_ms(path: Path, image: np.ndarray, lux: np.ndarray, runs: int = 100) -> float:
    from isplab.export import TFLiteRunner

    runner = TFLiteRunner(path)
    runner([image, lux])
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.interpreter.invoke()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


@pytest.mark.slow
@pytest.mark.parametrize(("target", "ensemble"), [("pisp", 1), ("vc4", 1), ("vc4", 2)])
def test_small_net_exports_within_the_reference_size(target, ensemble, tmp_path, capsys):
    """The default small net exports to libcamera's contract (parity within 1 mired, checked by
    export_awb) in a float32 file the search's estimate predicts within 3 KB, and (one member)
    smaller than Raspberry Pi's reference model; latencies are printed (the benchmark compares
    them; timing asserts would be flaky on a shared CPU)."""
    pytest.importorskip("litert_torch")
    from isplab.workflows.awb.export import export_awb
    from isplab.workflows.awb.search import tflite_size_estimate

    torch.manual_seed(0)
    model = build_awb_model(target, "small", ensemble=ensemble).eval()
    result = export_awb(model, target, tmp_path / "small.tflite", random_checks=50)
    assert result.max_mired_difference < 1.0
    parameters = sum(p.numel() for p in model.parameters())
    # The float32 file is the weights plus a graph per member.
    assert 4 * parameters < result.size_bytes
    assert abs(result.size_bytes - tflite_size_estimate(parameters, ensemble)) < 3 * 1024
    if ensemble > 1:
        return
    reference = SHARED / "reference-models" / f"model_{target}.tflite"
    if not reference.is_file():
        pytest.skip(f"{reference} absent: size and latency not compared with the reference")
    assert result.size_bytes < reference.stat().st_size
    h, w = (32, 32) if target == "pisp" else (12, 16)
    image = np.random.default_rng(0).uniform(0.02, 0.9, (1, h, w, 3)).astype(np.float32)
    lux = np.array([400.0], dtype=np.float32)
    ours, theirs = _latency_ms(result.path, image, lux), _latency_ms(reference, image, lux)
    with capsys.disabled():
        print(f"\n{target}: small {result.size_bytes / 1024:.1f} KB {ours:.3f} ms, "
              f"reference {reference.stat().st_size / 1024:.1f} KB {theirs:.3f} ms")
