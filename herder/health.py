"""GET /healthz and GET /readyz, as Kubernetes probes and JupyterHub's /hub/health.

- /healthz: the process answers; it touches nothing (no database, no engine),
  so a slow dependency never gets a live process restarted.
- /readyz: the herder can serve: its database, its channel layer, its
  container engine, and the images it runs. Each check gets
  HERDER_READY_TIMEOUT seconds (all run at once, in a small pool of their own,
  so a hung dependency holds at most those threads); 200 when all pass, else
  503 naming the ones that failed:

      {"code": "not_ready", "detail": "Not ready: engine, images.",
       "checks": {"database": {"ok": true, "ms": 1.1}, "engine": {"ok": false, "error": "unreachable"}, ...}}

  Failures are named, not explained (an error's text may name hosts and
  paths); the log has the details.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from herder.errors import RuntimeUnavailable, error_response
from herder.runtime import get_runtime

logger = logging.getLogger(__name__)

# Checks that block (the database, the engine) run here, never in the pool
# requests use: a hung engine holds these threads and nothing else.
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="herder-ready")


class CheckFailed(Exception):
    """A check's short, public reason."""


def _method_not_allowed(request):
    return error_response(405, "method_not_allowed", f"Method {request.method} is not allowed here.")


@csrf_exempt  # changes nothing; any other method is a JSON 405, not a CSRF 403
async def healthz(request):
    """Liveness: answers while the process and its event loop do."""
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed(request)
    return JsonResponse({"status": "ok"})


def _database() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()  # a thread of this pool keeps no connection


async def _channel_layer() -> None:
    layer = get_channel_layer()
    if layer is None:
        raise CheckFailed("not configured")
    if hasattr(layer, "connection"):  # channels-redis: a round trip to Redis
        await layer.connection(0).ping()
        return
    # Any other layer: a message sent to a channel of ours comes back.
    channel = await layer.new_channel("herder-readyz")
    marker = uuid.uuid4().hex
    await layer.send(channel, {"type": "readyz", "marker": marker})
    if (await layer.receive(channel)).get("marker") != marker:
        raise CheckFailed("wrong message")


def _images() -> list[str]:
    """Every image the herder runs (minion envs, golems, listed daemon images)."""
    images = [*settings.HERDER_MINION_IMAGES.values(), settings.HERDER_GOLEM_IMAGE, *settings.HERDER_DAEMON_IMAGES]
    return list(dict.fromkeys(images))


def _engine() -> None:
    try:
        # Any call answers whether the engine does; this one is cheap.
        get_runtime().image_exists(settings.HERDER_GOLEM_IMAGE)
    except RuntimeUnavailable as exc:
        raise CheckFailed("unreachable") from exc


def _images_present() -> None:
    runtime = get_runtime()
    try:
        missing = [image for image in _images() if not runtime.image_exists(image)]
    except RuntimeUnavailable as exc:
        raise CheckFailed("engine unreachable") from exc
    if missing:
        raise CheckFailed("missing: " + ", ".join(missing))


async def _run(name: str, check) -> tuple[str, dict]:
    started = time.perf_counter()
    try:
        if asyncio.iscoroutinefunction(check):
            await asyncio.wait_for(check(), settings.HERDER_READY_TIMEOUT)
        else:
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.run_in_executor(_pool, check), settings.HERDER_READY_TIMEOUT)
    except asyncio.TimeoutError:
        logger.warning("readyz: %s did not answer within %s s", name, settings.HERDER_READY_TIMEOUT)
        return name, {"ok": False, "error": "timeout"}
    except CheckFailed as exc:
        logger.warning("readyz: %s failed: %s", name, exc.__cause__ or exc)
        return name, {"ok": False, "error": str(exc)}
    except Exception as exc:
        logger.warning("readyz: %s failed: %r", name, exc)
        return name, {"ok": False, "error": "failed"}
    return name, {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


CHECKS = {
    "database": _database,
    "channel_layer": _channel_layer,
    "engine": _engine,
    "images": _images_present,
}


@csrf_exempt
async def readyz(request):
    """Readiness: every check passes (200), else 503 naming those that failed."""
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed(request)
    results = dict(await asyncio.gather(*(_run(name, check) for name, check in CHECKS.items())))
    failed = [name for name, result in results.items() if not result["ok"]]
    if failed:
        return JsonResponse(
            {"code": "not_ready", "detail": f"Not ready: {', '.join(failed)}.", "checks": results}, status=503
        )
    return JsonResponse({"status": "ok", "checks": results})
