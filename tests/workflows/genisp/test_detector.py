"""The frozen detector: building by name, local weights, freezing that still yields losses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from isplab.errors import IsplabError
from isplab.workflows.genisp.detector import (
    build_detector,
    detection_loss,
    detector_names,
    freeze,
    load_detector,
    predict_detections,
    save_detector,
)

SMALL = "retinanet_resnet18_fpn"


def _targets(n: int = 2) -> list[dict]:
    return [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 44.0], [30.0, 20.0, 60.0, 60.0]]), "labels": torch.tensor([1, 2])} for _ in range(n)]


def test_names_include_torchvision_and_small_ones():
    names = detector_names()
    assert {"retinanet_resnet50_fpn", "fcos_resnet50_fpn", "ssdlite320_mobilenet_v3_large", SMALL} <= set(names)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(IsplabError, match=r"unknown detector 'yolo'.*retinanet_resnet18_fpn"):
        build_detector("yolo", num_classes=4)


def test_torchvision_detector_by_name_takes_sizes_and_classes():
    model = build_detector("fcos_resnet50_fpn", num_classes=4, min_size=96, max_size=128)
    assert model.transform.min_size == (96,) and model.transform.max_size == 128
    assert model.head.classification_head.num_classes == 4


def test_local_weights_round_trip_and_wrong_architecture(tmp_path):
    torch.manual_seed(0)
    model = build_detector(SMALL, num_classes=4, min_size=64, max_size=64)
    path = tmp_path / "w.pth"
    torch.save(model.state_dict(), path)
    loaded = build_detector(SMALL, num_classes=4, weights=path, min_size=64, max_size=64)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(IsplabError, match=r"w.pth holds weights for another architecture"):
        build_detector("fcos_resnet18_fpn", num_classes=4, weights=path)
    with pytest.raises(IsplabError, match=r"w.pth holds weights for another architecture or class count"):
        build_detector(SMALL, num_classes=7, weights=path)
    with pytest.raises(IsplabError, match="does not exist"):
        build_detector(SMALL, num_classes=4, weights=tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_text("not weights")
    with pytest.raises(IsplabError, match="junk.pth is not a detector weights file"):
        build_detector(SMALL, num_classes=4, weights=tmp_path / "junk.pth")


def test_frozen_detector_returns_losses_passes_gradients_and_never_changes():
    torch.manual_seed(0)
    detector = build_detector(SMALL, num_classes=4, min_size=64, max_size=64)
    # give BatchNorm non-trivial statistics, as a trained detector has
    for m in detector.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    freeze(detector)
    assert detector.training and not any(p.requires_grad for p in detector.parameters())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in detector.modules())
    before = {k: v.clone() for k, v in detector.state_dict().items()}

    gain = nn.Parameter(torch.ones(1, 3, 1, 1))  # a stand-in for GenISP
    optimiser = torch.optim.Adam([gain], lr=1e-2)
    images = torch.rand(2, 3, 64, 64)
    loss, terms = detection_loss(detector, images * gain, _targets())
    assert set(terms) == {"classification", "bbox_regression"}
    assert torch.isfinite(loss) and loss > 0
    optimiser.zero_grad()
    loss.backward()
    assert gain.grad is not None and gain.grad.abs().sum() > 0
    optimiser.step()
    assert not torch.equal(gain.detach(), torch.ones(1, 3, 1, 1))
    after = detector.state_dict()
    assert before.keys() == after.keys()
    for k, value in before.items():
        assert torch.equal(value, after[k]), k
    # train() / eval() do not matter any more: the loss is the same in both (frozen statistics)
    detector.eval()
    again, _ = detection_loss(detector, images * gain.detach(), _targets())
    detector.train()
    third, _ = detection_loss(detector, images * gain.detach(), _targets())
    assert torch.allclose(again, third)


def test_detector_file_round_trip(tmp_path):
    torch.manual_seed(1)
    config = {"name": SMALL, "num_classes": 4, "min_size": 64, "max_size": 64}
    model = build_detector(**{k: v for k, v in config.items()})
    path = save_detector(model, tmp_path / "detector.pt", config)
    loaded = load_detector(path)
    assert loaded.detector_config == config
    image = [torch.rand(3, 64, 64)]
    a = predict_detections(model, image)[0]
    b = predict_detections(loaded, image)[0]
    assert torch.allclose(a["scores"], b["scores"], atol=1e-5)
    with pytest.raises(IsplabError, match="does not exist"):
        load_detector(tmp_path / "nope.pt")
