"""Every architecture: a small instance trains (forward, backward) and exports, dynamic in batch, height and width.

Exports go through segdist's own functions (ExportModel, write_onnx, write_torchscript, check),
as `segdist export` does: an example input of one size, then a check against PyTorch at another.
"""

from __future__ import annotations

import multiprocessing
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
from helpers import free_port, run_cli
from tiny_models import NUM_CLASSES, TINY, input_size, tiny_model
from torch import nn

from segdist.data.augment import Normalizer
from segdist.errors import DataError
from segdist.evaluation.export import ExportModel, check, write_onnx, write_torchscript
from segdist.models import ARCHS, ResUNetAttention

TOLERANCE = 1e-4  # max abs logit difference; float32 reorderings give about 1e-6


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_every_architecture_has_a_small_instance() -> None:
    assert set(TINY) == set(ARCHS)


@pytest.mark.parametrize("arch", ARCHS)
def test_trains_at_one_size_and_predicts_at_another(arch: str) -> None:
    model = tiny_model(arch).train()
    expected_class = ResUNetAttention if arch == "resunet_attention" else smp.MODEL_ARCHITECTURES_MAPPING[arch]
    assert type(model) is expected_class  # built by name from smp's own registry
    height, width = input_size(arch)
    logits = model(torch.randn(2, 3, height, width))
    assert logits.shape == (2, NUM_CLASSES, height, width)
    logits.square().mean().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), arch
    # Both ends of the network learn: the first encoder weight and the classifier.
    first, last = next(iter(grads.values())), list(grads.values())[-1]
    assert first.abs().sum() > 0 and last.abs().sum() > 0

    with torch.no_grad():
        other = model.eval()(torch.randn(1, 3, height + 32, width + 64))
    assert other.shape == (1, NUM_CLASSES, height + 32, width + 64)


def _export_and_check(arch: str, fmt: str, path: Path) -> float | None:
    """Export at 2x3xHxW, then compare with PyTorch at another batch size, height and width (not multiples of 32)."""
    height, width = input_size(arch)
    net = ExportModel(tiny_model(arch).eval(), Normalizer((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))).eval()
    example = torch.rand(2, 3, height, width) * 255
    (write_onnx if fmt == "onnx" else write_torchscript)(net, example, path, {"segdist.arch": arch})
    other = torch.rand(3, 3, height * 3 // 2 + 5, width * 3 // 4 + 3) * 255
    return check(net, path, fmt, other, TOLERANCE)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")
def test_torchscript_export_is_dynamic(arch: str, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        diff = _export_and_check(arch, "torchscript", tmp_path / "model.pt")
    assert diff < TOLERANCE


def _onnx_export_alone(arch: str, folder: str) -> float | None:
    """One architecture's ONNX export and check, in a process of its own with one compute thread."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return _export_and_check(arch, "onnx", Path(folder) / f"{arch}.onnx")


@pytest.fixture(scope="module")
def onnx_exports(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The selected architectures' ONNX exports, two at a time: each is 15-70 s of mostly one-thread tracing."""
    folder = tmp_path_factory.mktemp("onnx")
    archs = [item.callspec.params["arch"] for item in request.session.items
             if getattr(item, "originalname", "") == "test_onnx_export_is_dynamic"]
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
    yield {arch: pool.submit(_onnx_export_alone, arch, str(folder)) for arch in archs}
    pool.shutdown(cancel_futures=True)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_onnx_export_is_dynamic(arch: str, onnx_exports: dict[str, Future]) -> None:
    diff = onnx_exports[arch].result(timeout=900)
    assert diff is not None, "onnxruntime is missing: nothing was checked"
    assert diff < TOLERANCE


@pytest.mark.slow
def test_dpt_trains_on_two_processes_and_exports_from_the_cli(tiny_run: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    """The whole path for a non-U-Net: config options, DDP (every parameter must get a gradient), checkpoint, export."""
    repo = Path(__file__).resolve().parents[1]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(free_port()),
                "--config_file", str(repo / "launch/cpu-2proc.yaml")]
    cmd = [*launcher, "-m", "segdist", "train", "--config", str(repo / "configs/demo.yaml"),
           f"data.shards={tiny_run.parent.parent / 'shards'}", f"train.runs_dir={tmp_path}", "train.name=dpt",
           "model.arch=dpt", "model.encoder=test_vit", "model.decoder_dropout=0.1",
           "model.arch_kwargs={decoder_intermediate_channels: [16, 16, 16, 16], decoder_fusion_channels: 16}",
           "train.max_steps=2", "data.crop_size=[64,64]", "data.base_size=80", "data.val_size=64",
           "data.batch_size=2", "data.val_batch_size=2", "data.workers=0", "data.shuffle_window=8"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=repo)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    ranks = re.findall(r"\[rank (\d)/2\] .* steps=2 weights=([0-9a-f]{16})", result.stdout + result.stderr)
    assert len(ranks) == 2 and ranks[0][1] == ranks[1][1]  # both processes, same weights

    out = tmp_path / "model.onnx"
    run_cli("export", "--run", tmp_path / "dpt", "--format", "onnx", "--out", out)
    assert re.search(r"check on a random \S+ input: max \|exported - PyTorch\| = \S+ \(tolerance 0\.001\): ok",
                     capsys.readouterr().out)
    assert out.is_file()


class _FixedSize(nn.Module):
    """Python ints taken from the input's size: torch.export fixes the height and width to the example's."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image * torch.ones(int(image.shape[2]), int(image.shape[3]))


@pytest.mark.slow
def test_onnx_export_refuses_a_graph_that_came_out_static(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"fixed the input's height=64, width=64: this model cannot be exported"):
        write_onnx(_FixedSize(), torch.rand(2, 3, 64, 64) * 255, tmp_path / "model.onnx", {})
    assert not list(tmp_path.iterdir())
