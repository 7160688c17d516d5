"""`medssl export` (issue 36, part 3): a finished run's classifier as one file that gives the
run's probabilities: TorchScript and ONNX (run by onnxruntime) to within 1e-4 of PyTorch, any
batch size; safetensors that torchvision loads strictly; classifier.json says what goes in."""

import json

import pytest
import torch
import torchvision

from medssl.data import fixtures as fx
from medssl.training.export import Probabilities
from medssl.training.predict import open_source

FAST = ["--arch", "resnet18", "--image-size", "32", "--num-workers", "0", "--batch-size", "8",
        "--epochs", "1", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from medssl.cli import main

    tmp = tmp_path_factory.mktemp("export")
    root = fx.make_covid19(tmp, per_class=6)
    assert main(["finetune", "--dataset", "covid19", "--data-root", str(root), "--model", "M1",
                 *FAST, "--out", str(tmp / "run")]) == 0
    return tmp / "run"


def reference(run, x):
    source = open_source(run)
    with torch.no_grad():
        return Probabilities(source.backbone, source.head).eval()(x)


def test_torchscript_gives_the_runs_probabilities_at_any_batch_size(run, tmp_path, cli):
    code, _, err = cli("export", run, "--format", "torchscript", "--out", tmp_path)
    assert code == 0, err
    model = torch.jit.load(str(tmp_path / "classifier.pt"))
    for n in (1, 5):
        x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
        assert torch.allclose(model(x), reference(run, x), atol=1e-4)
    meta = json.loads((tmp_path / "classifier.json").read_text())
    assert meta["classes"] == ["Covid", "Normal", "Viral Pneumonia"]
    assert meta["image_size"] == 32 and meta["channels"] == 3 and len(meta["mean"]) == 3
    assert meta["run"] == str(run) and meta["model"] == "M1" and meta["window"] == "auto"


def test_onnx_run_by_onnxruntime_gives_the_runs_probabilities(run, tmp_path, cli):
    ort = pytest.importorskip("onnxruntime")  # the export extra: in requirements.txt for CI
    code, _, err = cli("export", run, "--format", "onnx", "--out", tmp_path)
    assert code == 0, err
    session = ort.InferenceSession(str(tmp_path / "classifier.onnx"),
                                   providers=["CPUExecutionProvider"])
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    got = session.run(None, {"image": x.numpy()})[0]
    assert abs(got - reference(run, x).numpy()).max() < 1e-4
    assert "checked with onnxruntime" in json.loads(
        (tmp_path / "classifier.json").read_text())["onnx_check"]


def test_safetensors_load_strictly_into_torchvision(run, tmp_path, cli):
    from safetensors.torch import load_file

    code, _, err = cli("export", run, "--format", "safetensors", "--out", tmp_path)
    assert code == 0, err
    net = torchvision.models.resnet18(num_classes=3)
    net.load_state_dict(load_file(str(tmp_path / "classifier.safetensors")), strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(net.eval()(x).softmax(1), reference(run, x), atol=1e-5)


def test_export_refuses_what_it_cannot_write(run, tmp_path, cli):
    code, _, err = cli("export", tmp_path / "nothing", "--format", "torchscript", "--out",
                       tmp_path / "o")
    assert code == 2 and "does not exist" in err
