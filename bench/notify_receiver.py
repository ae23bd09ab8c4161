"""The benchmark's webhook receiver, a process of its own (so answering notifications takes
no CPU from the load generator's event loop): `python -m bench.notify_receiver PORT`.

POST /hook records when each subject's first notification was accepted (wall clock);
POST /status/{code} sets what it answers; GET /arrival/{subject} and GET /count/{prefix} tell.
"""

from __future__ import annotations

import json
import sys
import time

from aiohttp import web

arrived: dict[str, float] = {}
state = {"status": 200, "requests": 0}


async def hook(request: web.Request) -> web.Response:
    subject = json.loads(await request.read())["data"]["subject"]
    state["requests"] += 1
    if state["status"] == 200:
        arrived.setdefault(subject, time.time())
    return web.Response(status=state["status"])


async def set_status(request: web.Request) -> web.Response:
    state["status"] = int(request.match_info["code"])
    return web.json_response(state)


async def arrival(request: web.Request) -> web.Response:
    at = arrived.get(request.match_info["subject"])
    return web.json_response({"at": at}, status=200 if at is not None else 404)


async def count(request: web.Request) -> web.Response:
    prefix = request.match_info["prefix"]
    times = [t for s, t in arrived.items() if s.startswith(prefix)]
    return web.json_response(
        {
            "accepted": len(times),
            "first": min(times, default=None),
            "last": max(times, default=None),
            "requests": state["requests"],
        }
    )


def main() -> None:
    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/status/{code}", set_status)
    app.router.add_get("/arrival/{subject}", arrival)
    app.router.add_get("/count/{prefix}", count)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
