# Fault tolerance knobs: max_retries on worker crashes, retry_exceptions, actor restarts.
import os
import tempfile

import cluster as ray

ray.init()
folder = tempfile.mkdtemp()


def read_runs(path):
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(f.read())


@ray.remote(max_retries=3)
def flaky(path):
    runs = read_runs(path) + 1
    with open(path, "w") as f:
        f.write(str(runs))
    if runs < 3:
        os._exit(1)  # the worker dies; the task is retried
    return runs


@ray.remote(max_retries=2, retry_exceptions=[ConnectionError])
def unreliable(path):
    runs = read_runs(path) + 1
    with open(path, "w") as f:
        f.write(str(runs))
    if runs < 2:
        raise ConnectionError("try again")
    return runs


@ray.remote(max_restarts=1)
class Phoenix:
    def pid(self):
        return os.getpid()

    def die(self):
        os._exit(1)


print(ray.get(flaky.remote(os.path.join(folder, "a"))), ray.get(unreliable.remote(os.path.join(folder, "b"))))
phoenix = Phoenix.remote()
first = ray.get(phoenix.pid.remote())
try:
    ray.get(phoenix.die.remote())  # not retried (max_task_retries=0): the call fails...
except ray.exceptions.RayActorError:
    pass
second = ray.get(phoenix.pid.remote())  # ...and the actor comes back in a new process
print(first != second)
assert first != second
print("OK")
