# Named actors in a namespace, found from tasks with ray.get_actor, then killed.
import cluster as ray

ray.init(namespace="ports")


@ray.remote
class Registry:
    def __init__(self):
        self.items = {}

    def put(self, key, value):
        self.items[key] = value

    def get(self, key):
        return self.items.get(key)


@ray.remote
def writer(key, value):
    registry = ray.get_actor("registry")  # the caller's namespace
    ray.get(registry.put.remote(key, value))
    return ray.get_runtime_context().namespace


registry = Registry.options(name="registry", get_if_exists=True).remote()
namespaces = ray.get([writer.remote(f"k{i}", i) for i in range(3)])
print(namespaces, ray.get(registry.get.remote("k2")))
assert namespaces == ["ports"] * 3 and ray.get(registry.get.remote("k2")) == 2
ray.kill(registry)
try:
    ray.get(registry.get.remote("k2"))
except ray.exceptions.RayActorError:
    print("killed")
print("OK")
