"""The monitoring listener: ``/health``, ``/ready`` and (when enabled) ``/metrics``, one small aiohttp app.

* ``/health``: 200 ``{"status": "ok"}`` as long as the event loop answers (liveness).
* ``/ready``: 200 when every readiness check passes, else 503; the JSON body lists each check with ``ok`` and, for
  a failed one, ``error``. The checks are plain callables the composition root provides; none may block long: the
  homeserver check reads :class:`HomeserverProbe`'s cached result, refreshed in the background.
* ``/metrics``: the Prometheus text format of one CollectorRegistry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], Awaitable[str | None]]
"""Returns None when fine, else a short problem text (no secrets)."""

CHECK_TIMEOUT_S = 2.0  # a check slower than this fails (the probe must answer quickly)


class HomeserverProbe:
    """GET <homeserver>/_matrix/client/versions every ``interval`` seconds; remembers the last outcome."""

    def __init__(self, base_url: str, *, interval: float, timeout: float, verify_ssl: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = base_url.rstrip("/") + "/_matrix/client/versions"
        self.interval = interval
        self.timeout = timeout
        self.verify_ssl = verify_ssl
        self._clock = clock
        self.ok = False
        self.error: str | None = "not checked yet"
        self.checked_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.verify_ssl))
        self._task = asyncio.create_task(self._run(), name="homeserver-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self.interval)

    async def check_once(self) -> None:
        assert self._session is not None
        try:
            async with asyncio.timeout(self.timeout):
                async with self._session.get(self.url) as resp:
                    await resp.read()
                    ok, error = resp.status == 200, None if resp.status == 200 else f"HTTP {resp.status}"
        except TimeoutError:
            ok, error = False, f"no answer within {self.timeout:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            ok, error = False, type(exc).__name__
        except Exception as exc:  # never let the probe task die: /ready would go stale (and say so)
            log.exception("homeserver check failed unexpectedly")
            ok, error = False, type(exc).__name__
        if ok != self.ok:
            if ok:
                log.info("homeserver reachable again (%s)", self.url)
            else:
                log.warning("homeserver check failed: %s (%s)", error, self.url)
        self.ok, self.error, self.checked_at = ok, error, self._clock()

    def problem(self) -> str | None:
        """None when the last check, recent enough, succeeded."""
        if self.checked_at is None:
            return self.error
        if self._clock() - self.checked_at > 3 * self.interval:
            return "homeserver check is stale"
        return None if self.ok else self.error


@dataclass
class Listen:
    host: str
    port: int


class ObservabilityServer:
    def __init__(self, listen: Listen, *, registry: CollectorRegistry | None, health: bool,
                 checks: dict[str, ReadyCheck]) -> None:
        self.listen = listen
        self.registry = registry
        self.checks = checks
        self.app = web.Application()
        if health:
            self.app.router.add_get("/health", self._health)
            self.app.router.add_get("/ready", self._ready)
        if registry is not None:
            self.app.router.add_get("/metrics", self._metrics)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Bind and serve. An address that cannot be bound is logged, not raised: monitoring never stops calls."""
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.listen.host, self.listen.port)
        try:
            await site.start()
        except OSError as exc:
            log.error("cannot listen for /health, /ready, /metrics on %s:%d: %s", self.listen.host,
                      self.listen.port, exc)
            await runner.cleanup()
            return
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.listen.port
        paths = dict.fromkeys(r.canonical for r in self.app.router.resources())
        log.info("monitoring listener on %s:%d (%s)", self.listen.host, self.port, ", ".join(paths))

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _ready(self, request: web.Request) -> web.Response:
        names = list(self.checks)
        results = await asyncio.gather(*(self._run_check(self.checks[n]) for n in names))
        body: dict[str, dict[str, object]] = {}
        for name, problem in zip(names, results, strict=True):
            body[name] = {"ok": True} if problem is None else {"ok": False, "error": problem}
        ready = all(problem is None for problem in results)
        failed = [n for n, p in zip(names, results, strict=True) if p is not None]
        return web.json_response({"ready": ready, "failed": failed, "checks": body}, status=200 if ready else 503)

    @staticmethod
    async def _run_check(check: ReadyCheck) -> str | None:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                return await check()
        except TimeoutError:
            return f"no answer within {CHECK_TIMEOUT_S:g} s"
        except Exception as exc:
            return type(exc).__name__

    async def _metrics(self, request: web.Request) -> web.Response:
        assert self.registry is not None
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.registry), headers={"Content-Type": content_type})
