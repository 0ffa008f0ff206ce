# An async actor serving many concurrent calls, awaited from an asyncio driver.
import asyncio

import cluster as ray

ray.init()


@ray.remote
class AsyncActor:
    def __init__(self):
        self.running = 0
        self.peak = 0

    async def run(self, i):
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(0.2)
        self.running -= 1
        return i

    async def peak_concurrency(self):
        return self.peak


actor = AsyncActor.remote()


async def main():
    results = await asyncio.gather(*[actor.run.remote(i) for i in range(20)])
    return results, await actor.peak_concurrency.remote()


results, peak = asyncio.run(main())
print(results[:5], peak > 1)
assert results == list(range(20)) and peak > 1
print("OK")
