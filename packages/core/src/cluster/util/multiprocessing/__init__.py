"""``cluster.util.multiprocessing``: ``multiprocessing.Pool`` on the cluster (Ray's
``ray.util.multiprocessing``). ``TimeoutError`` is the standard library's, as there."""

from multiprocessing import TimeoutError

from cluster.util.multiprocessing.pool import AsyncResult, IMapIterator, Pool

__all__ = ["AsyncResult", "IMapIterator", "Pool", "TimeoutError"]
