"""Training: the detector on normal-light renders, GenISP through it (frozen), the run folder, resume."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from isplab.errors import IsplabError
from isplab.models.genisp import genisp, load_genisp
from isplab.workflows.genisp.detector import load_detector
from isplab.workflows.genisp.train import (
    DetectorTrainConfig,
    GenISPModule,
    GenISPTrainConfig,
    open_split,
    train_detector,
    train_genisp,
)

TINY = {"subnet_size": 32, "subnet_channels": [4, 8, 8], "convnet_channels": [4, 8]}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from isplab.workflows.genisp.synth import synthesize

    out = tmp_path_factory.mktemp("genisp") / "data"
    synthesize(out, count=10, seed=3, size=(96, 64), workers=1)
    return out


@pytest.fixture(scope="module")
def detector_file(dataset):
    config = DetectorTrainConfig(short=32, long=48, batch_size=4, epochs=1, device="cpu", seed=0)
    return train_detector(dataset, dataset.parent / "det", config, progress=False)


def test_schedule_is_adam_1e2_times_01_at_5_and_10():
    module = GenISPModule(genisp(**TINY), torch.nn.Conv2d(3, 3, 1), GenISPTrainConfig())
    setup = module.configure_optimizers()
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.Adam)
    rates = []
    for _ in range(15):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([1e-2] * 5 + [1e-3] * 5 + [1e-4] * 5)
    assert setup["lr_scheduler"]["interval"] == "epoch"


def test_detector_run_folder(dataset, detector_file):
    folder = detector_file.parent
    assert {"detector.pt", "config.json", "log.txt", "checkpoints", "logs"} <= {p.name for p in folder.iterdir()}
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    assert list((folder / "logs" / "csv").glob("version_0/metrics.csv"))
    detector = load_detector(detector_file)
    assert detector.detector_config == {"name": "retinanet_resnet18_fpn", "num_classes": 4, "min_size": 32, "max_size": 48}
    assert not any(p.requires_grad for p in detector.parameters())


def test_genisp_trains_through_the_frozen_detector_and_resumes(dataset, detector_file, tmp_path):
    before = detector_file.read_bytes()
    config = GenISPTrainConfig(batch_size=4, epochs=1, device="cpu", genisp=TINY, seed=5)
    path = train_genisp(dataset, tmp_path / "run", detector_file, config, progress=False)
    model = load_genisp(path)
    L.seed_everything(5, workers=True, verbose=False)
    initial = genisp(**TINY)  # the same seeded initialisation the run started from
    changed = [k for k, v in initial.state_dict().items() if not torch.equal(v, model.state_dict()[k])]
    assert any(k.startswith("convnet") for k in changed) and any(k.startswith("conv_wb") for k in changed)
    assert detector_file.read_bytes() == before
    # the detector inside the checkpoint is bit-identical to the file's
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    frozen = load_detector(detector_file).state_dict()
    for key, value in frozen.items():
        assert torch.equal(saved[f"detector.{key}"], value), key
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "new run" in log and "val_ap" in log and "finished at step" in log

    with pytest.raises(IsplabError, match="already"):
        train_genisp(dataset, tmp_path / "run", detector_file, config, progress=False)
    config.epochs = 2
    train_genisp(dataset, tmp_path / "run", detector_file, config, resume=True, progress=False)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "resumed from" in log and log.count("finished at step") == 2
    assert len(list((tmp_path / "run" / "logs" / "csv").glob("version_*/metrics.csv"))) == 2


def test_bad_inputs_are_one_line_errors_and_write_nothing(dataset, detector_file, tmp_path):
    config = GenISPTrainConfig(batch_size=4, epochs=1, device="cpu", genisp=TINY)
    with pytest.raises(IsplabError, match=r"cam-z_train.json does not exist"):
        train_genisp(dataset, tmp_path / "a", detector_file, GenISPTrainConfig(camera="cam-z", device="cpu"), progress=False)
    with pytest.raises(IsplabError, match="does not exist"):
        train_genisp(dataset, tmp_path / "b", tmp_path / "missing.pt", config, progress=False)
    assert not (tmp_path / "b" / "model.pt").exists()
    with pytest.raises(IsplabError, match="unknown GenISP option"):
        train_genisp(dataset, tmp_path / "c", detector_file, GenISPTrainConfig(genisp={"width": 3}, device="cpu"), progress=False)
    with pytest.raises(IsplabError, match="unknown detector"):
        train_detector(dataset, tmp_path / "d", DetectorTrainConfig(detector="yolo", device="cpu"), progress=False)
    assert len(open_split(dataset, "cam-b", "train")) >= 1


@pytest.mark.slow
def test_torchvision_detector_from_a_local_state_dict(dataset, tmp_path):
    from isplab.workflows.genisp.detector import build_detector

    torch.manual_seed(0)
    name = "ssdlite320_mobilenet_v3_large"  # the smallest torchvision detector with a training loss
    weights = tmp_path / "ssdlite_coco.pth"
    torch.save(build_detector(name, num_classes=91).state_dict(), weights)
    config = GenISPTrainConfig(batch_size=4, epochs=1, device="cpu", genisp=TINY, detector_name=name, detector_weights=str(weights),
                               limit_train_images=4, short=32, long=48)
    path = train_genisp(dataset, tmp_path / "run", None, config, progress=False)
    assert load_genisp(path) is not None
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["detector_config"] == {"name": name, "num_classes": 91, "min_size": 32, "max_size": 48}
    with pytest.raises(IsplabError, match="another architecture"):
        bad = GenISPTrainConfig(device="cpu", genisp=TINY, detector_name="fcos_resnet50_fpn", detector_weights=str(weights))
        train_genisp(dataset, tmp_path / "run2", None, bad, progress=False)
