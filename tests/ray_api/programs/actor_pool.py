# Batch inference on a pool of model actors (ray.util.ActorPool), and errors caught by type.
import cluster as ray
from cluster.util import ActorPool

ray.init()


@ray.remote
class Model:
    def __init__(self, scale):
        self.scale = scale

    def predict(self, batch):
        if batch is None:
            raise ValueError("empty batch")
        return [x * self.scale for x in batch]


pool = ActorPool([Model.remote(2), Model.remote(2)])
batches = [[i, i + 1] for i in range(0, 10, 2)]
out = list(pool.map(lambda actor, batch: actor.predict.remote(batch), batches))
print(out)
assert out == [[2 * x for x in b] for b in batches]
try:
    ray.get(Model.remote(1).predict.remote(None))
except ray.exceptions.RayTaskError as err:
    assert isinstance(err, ValueError)
    print("caught:", type(err.cause).__name__)
print("OK")
