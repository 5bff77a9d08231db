"""``python -m faket_cluster``: the engine's command line (see :mod:`faket_cluster.cli`)."""

from .cli import main

main()
