# A first Ray program: tasks, an actor, and the cluster's resources.
import cluster as ray

ray.init()
print("resources:", ray.cluster_resources()["CPU"] >= 1)


@ray.remote
def square(x):
    return x * x


futures = [square.remote(i) for i in range(4)]
print(ray.get(futures))


@ray.remote
class Counter:
    def __init__(self):
        self.i = 0

    def get(self):
        return self.i

    def incr(self, value):
        self.i += value


c = Counter.remote()
for _ in range(10):
    c.incr.remote(1)
print(ray.get(c.get.remote()))
assert ray.get(futures) == [0, 1, 4, 9] and ray.get(c.get.remote()) == 10
assert ray.is_initialized()
ray.shutdown()
print("OK")
