import asyncio

import aiohttp

from discovery.register.config import RegistratorConfig
from discovery.register.registrator import Registrator


class ScriptedCatalog:
    """Stands in for `client.catalog`: answers from a script, then blocks."""

    def __init__(self, *script):
        self.script = list(script)

    async def services(self, index=None, wait=None):
        if not self.script:
            await asyncio.Event().wait()
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return str(step), {}


async def resyncs_after(*script):
    client = type("Client", (), {"catalog": ScriptedCatalog(*script)})()
    registrator = Registrator(RegistratorConfig(backoff_max=0.001), containers=None, client=client, owner="o")
    seen = []
    task = asyncio.create_task(registrator.follow_consul())
    for _ in range(len(script)):
        for _ in range(20):
            await asyncio.sleep(0.002)
        seen.append(registrator.resync_now.is_set())
        registrator.resync_now.clear()
    task.cancel()
    return seen


async def test_consul_answering_again_or_going_back_in_time_asks_for_a_reconcile():
    assert await resyncs_after(5, 6) == [False, False]
    down = aiohttp.ClientConnectionError("refused")
    assert any(await resyncs_after(5, down, 5))  # restarted: our registrations may be gone
    assert any(await resyncs_after(50, 3))  # snapshot restore or wiped data: the index went backwards
