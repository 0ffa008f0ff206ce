# Driver lifecycle and actor management idioms: re-init, nested refs, actor readiness and
# graceful termination, zero-CPU actors, max_calls.
import os

import cluster as ray

ray.init(address="auto")
ray.init(ignore_reinit_error=True)  # a second init is a no-op with the flag


@ray.remote
def inner():
    return "inner"


@ray.remote
def outer():
    return inner.remote()  # a task may return a ref it made


@ray.remote(num_cpus=0)
class Light:
    def pid(self):
        return os.getpid()


@ray.remote(max_calls=1)
def once():
    return os.getpid()


nested = ray.get(outer.remote())
assert isinstance(nested, ray.ObjectRef) and ray.get(nested) == "inner"
actors = [Light.remote() for _ in range(8)]  # more than the CPUs: they take none
ray.get([a.__ray_ready__.remote() for a in actors])
pids = ray.get([a.pid.remote() for a in actors])
assert len(set(pids)) == 8
actors[0].__ray_terminate__.remote()  # ends it once its earlier calls are done
try:
    ray.get(actors[0].pid.remote())
except ray.exceptions.RayActorError:
    print("terminated")
ray.get([once.remote() for _ in range(3)])
ready, not_ready = ray.wait([inner.remote() for _ in range(4)], num_returns=2, timeout=30, fetch_local=True)
assert len(ready) >= 2 and len(ready) + len(not_ready) == 4
ray.shutdown()
assert not ray.is_initialized()
ray.init()
assert ray.get(inner.remote()) == "inner"
print("OK")
