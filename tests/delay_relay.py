"""A TCP relay that holds every segment it reads for a fixed delay, each way: 50 ms of link delay for
tests/test_faults.py on kernels without the netem qdisc.

argv = listen host:port, target host:port, delay in seconds. Each accepted connection is relayed to
the target; what is read on either side is written to the other `delay` seconds after it arrived, in
order (a queue per direction), and end-of-stream follows the last data by the same delay. Run it in
a host's namespace in front of that host's server, so every connection into the host, and every
reply out of it, waits as it would behind a slow link.
"""
from __future__ import annotations

import asyncio
import sys


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    held: asyncio.Queue = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await held.get()
            await asyncio.sleep(max(0.0, due - loop.time()))  # the link's delay: holding is the point
            if data is None:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(deliver())
    try:
        while data := await reader.read(1 << 16):
            held.put_nowait((loop.time() + delay, data))
    except ConnectionError:
        pass
    held.put_nowait((loop.time() + delay, None))
    try:
        await sender
    except ConnectionError:
        pass


async def relay(client_reader, client_writer, target: tuple[str, int], delay: float) -> None:
    try:
        server_reader, server_writer = await asyncio.open_connection(*target)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pump(client_reader, server_writer, delay), pump(server_reader, client_writer, delay))
    for writer in (client_writer, server_writer):
        writer.close()


async def main(listen: str, target: str, delay: float) -> None:
    host, port = listen.rsplit(":", 1)
    to_host, to_port = target.rsplit(":", 1)
    server = await asyncio.start_server(lambda r, w: relay(r, w, (to_host, int(to_port)), delay), host, int(port))
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
