"""``ClusterBackend``: joblib's multiprocessing backend, on a ``cluster.util.multiprocessing.Pool``.

joblib sends batches of calls through the pool's ``apply_async`` and batches them by their
duration, as it does with its own process pool; ``n_jobs=-1`` means every CPU of the cluster.
``parallel_backend("ray", ray_remote_args={...})`` sets the options of the pool's actors.
"""

from __future__ import annotations

from typing import Any

from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase, PoolManagerMixin

from cluster.api.lifecycle import init, is_initialized
from cluster.util.multiprocessing.pool import Pool, cluster_cpus


class ClusterBackend(PoolManagerMixin, AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """Runs joblib's batches on the actors of a Pool, one per job."""

    supports_retrieve_callback = True
    supports_return_generator = False  # as joblib's multiprocessing backend: results come by callback

    def __init__(self, nesting_level: int | None = None, inner_max_num_threads: int | None = None,
                 ray_remote_args: dict[str, Any] | None = None, **backend_kwargs: Any) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads,
                         **backend_kwargs)
        self.ray_remote_args = ray_remote_args

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """How many jobs run at once: ``n_jobs``, counted from the cluster's CPUs if negative."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            if not is_initialized():
                init()
            return max(cluster_cpus() + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, prefer: str | None = None,
                  require: str | None = None, **backend_kwargs: Any) -> int:
        """Start the pool for a Parallel call; the number of jobs it runs at once."""
        n_jobs = self.effective_n_jobs(n_jobs)
        self._pool = Pool(n_jobs, ray_remote_args=self.ray_remote_args)
        self.parallel = parallel
        return n_jobs

    def terminate(self) -> None:
        """Stop the pool's actors."""
        super().terminate()
        self.reset_batch_stats()
