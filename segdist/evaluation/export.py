"""`segdist export`: a run's model as ONNX or TorchScript, dynamic in batch, height and width, checked against PyTorch.

The exported graph takes RGB images as float32 [N, 3, H, W] in 0..255, any H and W, and returns
logits [N, C, H, W]: the run's normalisation and the padding to a multiple of 32 are inside it,
so a deployment needs only the file. Class names, palette and ignore index are in its metadata
(ONNX `metadata_props`, TorchScript extra file `segdist.json`).

Before the file is put in place it is run on a random input of another batch size and another
height and width than the export example (none a multiple of 32) and compared with PyTorch.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segdist.data.augment import Normalizer
from segdist.errors import DataError
from segdist.runs.run import Run, load_run

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
DEFAULT_TOLERANCE = 1e-3  # max abs logit difference; float32 reorderings stay around 1e-5


class ExportModel(nn.Module):
    """RGB float 0..255 [N, 3, H, W] -> logits [N, C, H, W] for any H, W (TorchScript-compatible)."""

    def __init__(self, model: nn.Module, normalize: Normalizer):
        super().__init__()
        self.normalize, self.model = normalize, model

    def forward(self, image: Tensor) -> Tensor:
        x = self.normalize(image)
        h, w = x.shape[-2], x.shape[-1]
        x = F.pad(x, [0, (32 - w % 32) % 32, 0, (32 - h % 32) % 32])  # segdist models need multiples of 32
        return self.model(x)[:, :, :h, :w]


def export(run_dir: str | Path, fmt: str, out: str | Path | None = None, *, checkpoint: str | None = None,
           tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Export, check and write the model; returns {"path", "max_abs_diff" (None if unchecked), ...}."""
    if fmt not in FORMATS:
        raise DataError(f"format '{fmt}' is not valid; choose one of {', '.join(FORMATS)}")
    run = load_run(run_dir, checkpoint)
    out = Path(out) if out else run.dir / "export" / f"model{SUFFIXES[fmt]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    net = ExportModel(run.model, run.normalizer()).eval()
    height, width = run.config.data.crop_size
    example = torch.rand(2, 3, height, width) * 255  # batch 2: torch.export fixes a dimension of size 1
    check_input = torch.rand(2, 3, height * 3 // 2 + 5, width * 3 // 4 + 3) * 255
    print(f"exporting {run.checkpoint} as {fmt} (example input 2x3x{height}x{width}; dynamic batch, height, width)")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as staging:
        staged = Path(staging) / out.name
        (write_onnx if fmt == "onnx" else write_torchscript)(net, example, staged, metadata(run))
        diff = check(net, staged, fmt, check_input, tolerance)
        # ONNX weights past 2 GB go to a side file: move it first, the model file last
        for path in sorted(Path(staging).iterdir(), key=lambda p: p == staged):
            os.replace(path, out.parent / path.name)
    print(f"wrote {out}")
    return {"path": str(out), "format": fmt, "max_abs_diff": diff, "tolerance": tolerance,
            "check_shape": list(check_input.shape)}


def metadata(run: Run) -> dict[str, str]:
    return {
        "segdist.classes": json.dumps(run.classes),
        "segdist.palette": json.dumps(run.palette),
        "segdist.ignore_index": str(run.ignore_index),
        "segdist.input": "image: float32 RGB [N, 3, H, W] in 0..255 (normalisation inside)",
        "segdist.output": "logits: float32 [N, C, H, W]; argmax over C gives class ids",
        "segdist.checkpoint": str(run.checkpoint),
    }


def write_onnx(net: ExportModel, example: Tensor, path: Path, meta: dict[str, str]) -> None:
    try:
        import onnxscript  # noqa: F401  (torch's exporter needs it, and onnx)
    except ImportError:
        raise DataError("ONNX export needs the onnx and onnxscript packages: pip install 'segdist[export]'") from None
    from torch.export import Dim

    # AUTO lets torch.export find the sizes the model accepts. Explicit ranges (min=2) that a model narrows
    # (a 1x1 map at stride 32, a ViT's patch grid) made it fail, and torch.onnx then fell back to a static graph.
    dims = {"image": {0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO}}
    program = torch.onnx.export(net, (example,), dynamo=True, input_names=["image"], output_names=["logits"],
                                dynamic_shapes=dims, verbose=False)
    fixed = fixed_dimensions(program.exported_program)
    if fixed:
        raise DataError(f"torch.export fixed the input's {', '.join(fixed)}: this model cannot be exported to ONNX "
                        "with a dynamic size (it reads a size as a Python number); nothing written")
    program.model.metadata_props.update(meta)
    program.save(path)


def fixed_dimensions(program: torch.export.ExportedProgram) -> list[str]:
    """The image's batch, height and width that torch.export pinned to one value ("height=64"), if any.

    The ONNX graph still names them as symbols then, but runs only at the example's size.
    """
    name = program.graph_signature.user_inputs[0]
    image = next(node for node in program.graph.nodes if node.name == name).meta["val"]
    fixed = []
    for axis, label in ((0, "batch"), (2, "height"), (3, "width")):
        size = image.shape[axis]
        if isinstance(size, torch.SymInt):
            bounds = program.range_constraints.get(size.node.expr)
            if bounds is None or bounds.lower != bounds.upper:
                continue  # dynamic
            size = bounds.lower
        fixed.append(f"{label}={int(size)}")
    return fixed


def write_torchscript(net: ExportModel, example: Tensor, path: Path, meta: dict[str, str]) -> None:
    """Trace the network at the example size, script the wrapper around it (its padding stays dynamic)."""
    print("note: TorchScript is deprecated in PyTorch; prefer --format onnx for new deployments")
    padded = F.pad(net.normalize(example), [0, -example.shape[-1] % 32, 0, -example.shape[-2] % 32])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
        with torch.no_grad():
            traced = torch.jit.trace(net.model, padded)
        scripted = torch.jit.script(ExportModel(traced, net.normalize))
        torch.jit.save(scripted, str(path), _extra_files={"segdist.json": json.dumps(meta)})


def check(net: ExportModel, path: Path, fmt: str, image: Tensor, tolerance: float) -> float | None:
    """Max abs difference between the exported model and PyTorch on `image`; raises above `tolerance`."""
    with torch.no_grad():
        expected = net(image).numpy()
    got = run_exported(path, fmt, image.numpy())
    if got is None:
        print("onnxruntime is not installed: the ONNX file is written but NOT checked (pip install onnxruntime)")
        return None
    if got.shape != expected.shape:
        raise DataError(f"exported model returned {got.shape} for input {tuple(image.shape)}, PyTorch {expected.shape}")
    diff = float(np.abs(got - expected).max())
    shape = "x".join(map(str, image.shape))
    verdict = "ok" if diff <= tolerance else "FAILED"
    print(f"check on a random {shape} input: max |exported - PyTorch| = {diff:.3g} "
          f"(tolerance {tolerance:g}): {verdict}")
    if diff > tolerance:
        raise DataError(f"the {fmt} export differs from PyTorch by {diff:.3g} > {tolerance:g}; nothing written")
    return diff


def run_exported(path: Path, fmt: str, image: np.ndarray) -> np.ndarray | None:
    """Logits from the exported file (onnxruntime for ONNX, None when it is not installed)."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
            module = torch.jit.load(str(path))
        with torch.no_grad():
            return module(torch.from_numpy(image)).numpy()
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": image})[0]
