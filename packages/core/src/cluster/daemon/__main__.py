"""``python -m cluster.daemon``: see :mod:`cluster.daemon.main`."""

from cluster.daemon.main import main

main()
