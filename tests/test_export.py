"""`segdist export`: ONNX and TorchScript round trips at sizes other than the export example's 2x3x64x64."""

import json
import re

import numpy as np
import pytest
import torch
from helpers import run_cli

from segdist.models.inference import padded_logits
from segdist.runs.run import load_run

TOLERANCE = 1e-4  # max abs logit difference accepted here; float32 reorderings give about 1e-6


def pytorch_logits(run, image: torch.Tensor) -> np.ndarray:
    """What evaluate computes for `image` (RGB 0..255), through segdist.inference rather than the export wrapper."""
    with torch.no_grad():
        return padded_logits(run.model, run.normalizer()(image)).numpy()


def printed_difference(text: str) -> float:
    found = re.search(r"max \|exported - PyTorch\| = (\S+) \(tolerance 0\.001\): ok", text)
    assert found, text
    return float(found[1])


@pytest.mark.slow
def test_onnx_round_trip(tiny_run, tmp_path, capsys):
    import onnx
    import onnxruntime as ort

    out = tmp_path / "model.onnx"
    run_cli("export", "--run", tiny_run, "--format", "onnx", "--out", out)
    assert printed_difference(capsys.readouterr().out) < TOLERANCE
    assert list(tmp_path.iterdir()) == [out]  # the staging folder is gone

    run = load_run(tiny_run)
    image = torch.rand(3, 3, 75, 45) * 255  # another batch, height and width again
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": image.numpy()})[0]
    np.testing.assert_allclose(got, pytorch_logits(run, image), rtol=0, atol=TOLERANCE)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["segdist.classes"]) == run.classes and json.loads(meta["segdist.palette"]) == run.palette


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_round_trip(tiny_run, tmp_path, capsys):
    out = tmp_path / "model.pt"
    run_cli("export", "--run", tiny_run, "--format", "torchscript", "--out", out)
    assert printed_difference(capsys.readouterr().out) < TOLERANCE

    run = load_run(tiny_run)
    extra = {"segdist.json": ""}
    module = torch.jit.load(str(out), _extra_files=extra)
    image = torch.rand(3, 3, 75, 45) * 255
    with torch.no_grad():
        got = module(image).numpy()
    np.testing.assert_allclose(got, pytorch_logits(run, image), rtol=0, atol=TOLERANCE)
    assert json.loads(json.loads(extra["segdist.json"])["segdist.classes"]) == run.classes


def test_a_failed_check_writes_nothing(tiny_run, tmp_path, capsys, monkeypatch):
    import segdist.evaluation.export

    real = segdist.evaluation.export.run_exported
    monkeypatch.setattr(segdist.evaluation.export, "run_exported",
                        lambda path, fmt, image: real(path, fmt, image) + 0.01)
    with pytest.raises(SystemExit):
        run_cli("export", "--run", tiny_run, "--format", "torchscript", "--out", tmp_path / "model.pt")
    assert "differs from PyTorch by 0.01 > 0.001; nothing written" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
