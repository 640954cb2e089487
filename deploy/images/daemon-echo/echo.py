"""A small daemon for the herder's tests and benchmarks.

HTTP on $PORT (default 8080): GET /hello answers "hello"; POST|PUT /echo streams
the request body back; GET /ws is a WebSocket echo; any other path answers the
request's method, path, query and headers as JSON. Lines on stdin come back on
stdout as "echo: <line>"; lines starting with "err " go to stderr.
Files the herder wrote into /minion are listed at GET /files and served at
GET /pages/<name>. GET /app/ is a small web app of the kind daemons serve: it
sets a cookie (server and script), links relatively to /app/next (which
answers the cookies it got) and opens a WebSocket to /ws. GET
/set-cookie?cookie=<Set-Cookie value> answers that Set-Cookie; GET
/sleep?seconds=N answers after N seconds (a hanging daemon).
"""

import asyncio
import mimetypes
import os
import sys
import threading

from aiohttp import WSMsgType, web


async def hello(request):
    return web.Response(text="hello")


async def echo(request):
    response = web.StreamResponse(headers={"Content-Type": request.content_type})
    await response.prepare(request)
    async for chunk in request.content.iter_chunked(64 * 1024):
        await response.write(chunk)
    await response.write_eof()
    return response


async def websocket(request):
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            await ws.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws


async def files(request):
    names = sorted(
        os.path.relpath(os.path.join(root, name), "/minion") for root, _, found in os.walk("/minion") for name in found
    )
    return web.json_response(names)


APP = """<!doctype html><title>app</title>
<a id="next" href="next">next</a>
<script>
document.cookie = "js=1; path=/";
var ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
ws.onopen = function () { ws.send("ping"); };
ws.onmessage = function (m) { document.body.setAttribute("data-ws", m.data); };
</script>
"""


async def app_page(request):
    return web.Response(text=APP, content_type="text/html", headers={"Set-Cookie": "app=server; Path=/"})


async def app_next(request):
    return web.Response(text=request.headers.get("Cookie", ""))


async def page(request):
    root = os.path.realpath("/minion")
    path = os.path.realpath(os.path.join(root, request.match_info["name"]))
    if not path.startswith(root + "/") or not os.path.isfile(path):
        raise web.HTTPNotFound()
    with open(path, "rb") as f:
        body = f.read()
    return web.Response(body=body, content_type=mimetypes.guess_type(path)[0] or "application/octet-stream")


async def set_cookie(request):
    return web.Response(text="set", headers={"Set-Cookie": request.query.get("cookie", "a=b")})


async def sleep(request):
    await asyncio.sleep(float(request.query.get("seconds", "3600")))
    return web.Response(text="slept")


async def describe(request):
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "headers": dict(request.headers),
        }
    )


def echo_stdin():
    for line in sys.stdin:
        if line.startswith("err "):
            print(line[4:], end="", file=sys.stderr, flush=True)
        else:
            print(f"echo: {line}", end="", flush=True)


def main():
    threading.Thread(target=echo_stdin, daemon=True).start()
    app = web.Application(client_max_size=1024**3)
    app.add_routes(
        [
            web.get("/hello", hello),
            web.post("/echo", echo),
            web.put("/echo", echo),
            web.get("/ws", websocket),
            web.get("/files", files),
            web.get("/app/", app_page),
            web.get("/app/next", app_next),
            web.get("/pages/{name:.+}", page),
            web.get("/set-cookie", set_cookie),
            web.get("/sleep", sleep),
            web.route("*", "/{tail:.*}", describe),
        ]
    )
    print("daemon-echo ready", flush=True)
    web.run_app(app, port=int(os.environ.get("PORT", "8080")), print=None, handle_signals=True, access_log=None)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
