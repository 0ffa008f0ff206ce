# A large array put once and read zero-copy by many tasks; a task returning a large result.
import numpy as np

import cluster as ray

ray.init()
data = np.ones((1000, 1000))
ref = ray.put(data)


@ray.remote
def column_sum(matrix, j):
    assert not matrix.flags.writeable  # read straight from shared memory
    return float(matrix[:, j].sum())


@ray.remote
def make(n):
    return np.full(n, 7.0)


sums = ray.get([column_sum.remote(ref, j) for j in range(8)])
big = ray.get(make.remote(2_000_000))
print(sums[:3], big.nbytes)
assert sums == [1000.0] * 8 and big.sum() == 14_000_000.0
print("OK")
