"""The daemon process: ``python -m cluster.daemon`` (started by ``cluster start`` or ``init()``).

:mod:`.main` binds the port, forks the zygote, and runs the head service and/or the node
service on one port, routing each message to the service that owns it, plus the services
plugins add. May import: head, node, worker (the zygote), wire, the leaf modules.
"""
