"""``python -m cluster``: the command line."""

from cluster.cli import main

main()
