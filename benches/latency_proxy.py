#!/usr/bin/env python3
"""A TCP proxy that adds a fixed delay to every HTTP request.

    latency_proxy.py LISTEN_PORT UPSTREAM_PORT DELAY_MS

Per connection, the first bytes the client sends after the upstream last answered (or after
connecting) are held back DELAY_MS: with keep-alive HTTP/1.1 that is one delay per request,
like a round trip to a distant object store. Bodies stream unchanged. Prints "ready" once
listening.
"""
import asyncio
import sys


async def pipe(reader, writer, before=None, after=None):
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            if before:
                await before()
            writer.write(data)
            await writer.drain()
            if after:
                after()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def handle(creader, cwriter, upstream, delay):
    try:
        ureader, uwriter = await asyncio.open_connection("127.0.0.1", upstream)
    except OSError:
        cwriter.close()
        return
    state = {"new_request": True}

    async def before():
        if state["new_request"]:
            state["new_request"] = False
            await asyncio.sleep(delay)

    def answered():
        state["new_request"] = True

    await asyncio.gather(pipe(creader, uwriter, before=before),
                         pipe(ureader, cwriter, after=answered))


async def main():
    listen, upstream, delay_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, upstream, delay_ms / 1000.0), "127.0.0.1", listen)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
