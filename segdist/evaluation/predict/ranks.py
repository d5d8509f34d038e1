"""How the processes of `accelerate launch` share `segdist predict`'s inputs and agree on its outcome.

The main process resolves the input list once (a listing by every rank could differ, e.g. a glob
over a folder that outputs are being written to) and sends it to all; rank r of N predicts items
r, r+N, r+2N, ... of it. The shares are disjoint, together hold every input, differ in length by at
most one, and depend on nothing but the list and N, so a rerun gives each rank the same share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

from segdist.errors import DataError

T = TypeVar("T")


def share(items: list[T], rank: int, world: int) -> list[T]:
    """This rank's items: `rank`, `rank + world`, `rank + 2 * world`, ..."""
    return items[rank::world]


def from_main(accelerator, make: Callable[[], T]) -> T:  # noqa: ANN001
    """`make()` run on the main process, its value given to every rank; its error ends every rank."""
    if accelerator.num_processes == 1:
        return make()
    box: list = [None]
    error: Exception | None = None
    if accelerator.is_main_process:
        try:
            box = [(True, make())]
        except Exception as exc:  # noqa: BLE001 - every rank must hear of it, or the others wait forever
            error, box = exc, [(False, str(exc))]
    torch.distributed.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    made, value = box[0]
    if not made:
        raise DataError(f"rank 0: {value}")
    return value


def gathered(accelerator, items: list) -> list:  # noqa: ANN001
    """Every rank's `items`, concatenated in rank order, on every rank."""
    if accelerator.num_processes == 1:
        return list(items)
    parts: list = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(parts, items)
    return [item for part in parts for item in part]
