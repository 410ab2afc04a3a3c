"""Where a call's media plane comes from: built by the composition root, used by the call manager.

``InProcessMedia`` runs each call's ``CallMedia`` in the bridge process (``media.workers: 0``);
``WorkerMedia`` places it on a pool of worker processes (``RemoteCallMedia``). Another backend (e.g. an
external media server) is one more class with these three methods.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from .call_media import CallMedia
from .ports import PortAllocator
from .remote_media import RemoteCallMedia
from .settings import MediaSettings
from .worker_pool import WorkerPool

Log = logging.LoggerAdapter[Any] | logging.Logger


class MediaFactory(Protocol):
    def new(self, settings: MediaSettings, ports: PortAllocator, log: Log) -> CallMedia: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class InProcessMedia:
    def new(self, settings: MediaSettings, ports: PortAllocator, log: Log) -> CallMedia:
        return CallMedia(settings, ports, log=log)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class WorkerMedia:
    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def new(self, settings: MediaSettings, ports: PortAllocator, log: Log) -> CallMedia:
        return RemoteCallMedia(settings, ports, self.pool, log=log)

    async def start(self) -> None:
        await self.pool.start()

    async def stop(self) -> None:
        await self.pool.stop()
