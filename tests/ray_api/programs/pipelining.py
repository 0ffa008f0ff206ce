# Process results as they finish with ray.wait, and reduce them in a tree of nested tasks.
import random
import time

import cluster as ray

ray.init()


@ray.remote
def work(i):
    time.sleep(random.random() / 50)
    return i


@ray.remote
def add(a, b):
    return a + b


@ray.remote
def tree_sum(values):
    if len(values) == 1:
        return values[0]
    mid = len(values) // 2
    left, right = tree_sum.remote(values[:mid]), tree_sum.remote(values[mid:])
    return ray.get(add.remote(left, right))


pending = [work.remote(i) for i in range(20)]
seen = []
while pending:
    done, pending = ray.wait(pending, num_returns=1)
    seen.append(ray.get(done[0]))
assert sorted(seen) == list(range(20))
total = ray.get(tree_sum.remote(list(range(16))))
print(total)
assert total == 120
print("OK")
