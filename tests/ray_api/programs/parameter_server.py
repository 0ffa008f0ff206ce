# A synchronous parameter server: an actor holds numpy weights, tasks compute gradients.
import numpy as np

import cluster as ray

ray.init()


@ray.remote
class ParameterServer:
    def __init__(self, dim):
        self.weights = np.zeros(dim)

    def apply_gradients(self, *gradients):
        self.weights -= 0.1 * np.mean(gradients, axis=0)
        return self.weights

    def get_weights(self):
        return self.weights


@ray.remote
def compute_gradient(weights, target):
    return weights - target


target = np.arange(8, dtype=float)
ps = ParameterServer.remote(8)
target_ref = ray.put(target)  # shared by every task, stored once
weights = ps.get_weights.remote()
for _ in range(50):
    gradients = [compute_gradient.remote(weights, target_ref) for _ in range(2)]
    weights = ps.apply_gradients.remote(*gradients)
final = ray.get(weights)
print(np.round(final, 2))
assert np.allclose(final, target, atol=0.1)
print("OK")
