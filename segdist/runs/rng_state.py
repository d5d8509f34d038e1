"""Every RNG a training process draws from (Python, NumPy, torch CPU and CUDA) as plain JSON data.

accelerate pickled these states; JSON keeps a checkpoint free of anything that runs code when read.
"""

from __future__ import annotations

import base64
import random

import numpy as np
import torch


def rng_state() -> dict:
    """This process's Python, NumPy, torch CPU and CUDA RNG states as JSON (what accelerate pickled)."""
    version, keys, gauss = random.getstate()
    kind, mt, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(keys), gauss],
             "numpy": [kind, mt.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": _bytes_text(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["cuda"] = [_bytes_text(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Set the RNGs to `rng_state()`'s values, all or none: every part is checked before any is set."""
    version, keys, gauss = state["python"]
    python = (int(version), tuple(int(k) for k in keys), None if gauss is None else float(gauss))
    random.Random().setstate(python)
    kind, mt, pos, has_gauss, cached = state["numpy"]
    numpy = (str(kind), np.asarray(mt, dtype=np.int64).astype(np.uint32), int(pos), int(has_gauss), float(cached))
    if not np.array_equal(numpy[1], np.asarray(mt, dtype=np.int64)):
        raise ValueError("NumPy's state holds values outside 0..2**32-1")
    np.random.RandomState().set_state(numpy)
    cpu = _text_bytes(state["torch"])
    torch.Generator().set_state(cpu)
    cuda = [_text_bytes(s) for s in state.get("cuda", [])]
    random.setstate(python)
    np.random.set_state(numpy)
    torch.set_rng_state(cpu)
    if torch.cuda.is_available():  # a checkpoint written on another device kind has no (or unused) CUDA states
        for device, s in enumerate(cuda[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, device)


def _bytes_text(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _text_bytes(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text, validate=True)), dtype=torch.uint8)
