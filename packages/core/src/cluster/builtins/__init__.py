"""cluster-core's built-in plugins, one per concern, registered exactly as a third party's.

Each module here is a pluggy plugin (functions marked ``@hookimpl`` and nothing else) named in
:data:`cluster.plugins.BUILTIN_PLUGINS`; any of them can be switched off by its name with
``CLUSTER_DISABLE_PLUGINS=name,...`` and replaced by an installed plugin:

- ``store`` (:mod:`.objectstore`): the node's object store (shared memory, or in-process);
- ``spilling`` (:mod:`.spilling`): spilling to a directory on disk;
- ``metadata`` (:mod:`.metadata`): the head's metadata store in SQLite;
- ``scheduler`` (:mod:`.scheduler`): the default scheduling policy;
- ``cli`` (:mod:`.cli`): core's own ``cluster`` subcommands.

These sit at the top of the package: they may import anything of cluster.
"""
