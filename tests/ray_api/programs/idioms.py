# Smaller idioms Ray programs use: multiple returns, ray.method, functional ray.remote, refs
# nested in containers, timeouts, node ips, type hints from ray.actor, and the util modules.
import cluster as ray
from cluster.actor import ActorHandle
from cluster.util.multiprocessing import Pool
from cluster.util.queue import Queue

ray.init()


@ray.remote(num_returns=2)
def split(x):
    return x, -x


def plain(x):
    return x + 1


remote_plain = ray.remote(plain)                 # the functional form
heavier = ray.remote(num_cpus=1)(plain)


@ray.remote
class Pair:
    @ray.method(num_returns=2)
    def both(self, x):
        return x, x * 2


@ray.remote
def total(refs):                                 # refs inside a list are not resolved for us
    return sum(ray.get(refs))


@ray.remote
def sleepy():
    import time

    time.sleep(30)


@ray.remote
def ip():
    return ray.util.get_node_ip_address()


a, b = split.remote(3)
pair: ActorHandle = Pair.remote()
x, y = pair.both.remote(5)
assert ray.get([a, b, x, y]) == [3, -3, 5, 10]
assert ray.get(remote_plain.remote(1)) == 2 and ray.get(heavier.remote(2)) == 3
assert ray.get(total.remote([ray.put(i) for i in range(5)])) == 10
try:
    ray.get(sleepy.remote(), timeout=0.5)
except ray.exceptions.GetTimeoutError:
    print("timed out")
assert ray.get(ip.remote()) == ray.util.get_node_ip_address()
queue = Queue(maxsize=10)
queue.put(1)
assert queue.get(timeout=10) == 1
with Pool(2) as pool:
    assert pool.map(plain, range(5)) == [1, 2, 3, 4, 5]
assert isinstance(a, ray.ObjectRef) and a.hex() == a.hex() and hash(a) == hash(a)
print("OK")
