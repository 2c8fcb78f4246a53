"""``python -m tdexport`` (also what ``torchrun -m tdexport`` runs)."""

from .cli import main

main()
