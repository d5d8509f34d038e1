"""Lines printed by several processes sharing one terminal or log file."""

from __future__ import annotations

import sys
from typing import TextIO


def print_line(text: str, file: TextIO | None = None) -> None:
    """Print `text` and its newline in one write, so lines of several ranks sharing a pipe never interleave.

    print() writes the text and the end separately; unbuffered (PYTHONUNBUFFERED, SLURM logs) two
    ranks' lines can then end up joined on one line.
    """
    stream = file or sys.stdout
    stream.write(text + "\n")
    stream.flush()
