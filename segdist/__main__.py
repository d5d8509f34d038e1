"""`python -m segdist ...`, which is what `accelerate launch -m segdist train ...` runs."""

from segdist.cli import main

main()
