"""What the service's supervisors (training jobs, deployments) share: a loop that takes a
look every `tick_seconds` and outlives its own failures, and threads for what blocks."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

from atelier.hub.context import Context

log = logging.getLogger(__name__)


class Supervisor:
    what: ClassVar[str]  # what it supervises, for the log
    tick_seconds: ClassVar[float]

    def __init__(self, context: Context, threads: int, name: str):
        self.context = context
        self.busy: set[str] = set()  # what a step is working on, by id
        self.steps: set[asyncio.Task] = set()  # held: the loop keeps only weak references
        self.threads = ThreadPoolExecutor(threads, thread_name_prefix=name)

    @property
    def store(self):
        return self.context.store

    async def in_thread(self, work, *args):
        return await asyncio.get_running_loop().run_in_executor(self.threads, work, *args)

    async def supervise(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # noqa: BLE001 - the next tick tries again
                log.exception("supervising %s failed", self.what)
            await asyncio.sleep(self.tick_seconds)

    async def tick(self) -> None:
        raise NotImplementedError
