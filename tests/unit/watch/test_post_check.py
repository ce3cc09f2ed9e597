"""The post-check waits for a burst of Runtime API changes to end, but not for ever."""

import asyncio

from discovery.watch.post_check import PostCheck


class Asked(list):
    def __init__(self):
        super().__init__()
        self.event = asyncio.Event()


def checker():
    asked = Asked()

    def written():
        asked.append(asyncio.get_running_loop().time())
        asked.event.set()
        return None  # nothing to validate: only when it is asked is under test

    return PostCheck(output=None, haproxy_bin="haproxy", written=written), asked  # type: ignore[arg-type]


async def test_a_burst_is_checked_once_after_it_has_been_quiet():
    post, asked = checker()
    task = asyncio.create_task(post.run(quiet=1.0, at_most=60))
    try:
        for _ in range(30):  # a change every 10 ms for 0.3 s: never 1 s of quiet
            post.due()
            await asyncio.sleep(0.01)
        assert asked == []
        async with asyncio.timeout(10):  # ~1 s of quiet; 10 s only ends a hang
            await asked.event.wait()
        await asyncio.sleep(0.2)
        assert len(asked) == 1
    finally:
        task.cancel()


async def test_changes_that_never_pause_are_checked_all_the_same():
    post, asked = checker()
    task = asyncio.create_task(post.run(quiet=1.0, at_most=0.2))
    try:
        async with asyncio.timeout(10):
            while len(asked) < 2:  # every 0.2 s although no 1 s of quiet ever comes
                post.due()
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
