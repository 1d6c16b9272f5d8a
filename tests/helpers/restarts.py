"""The emulated API server restarting, as kube-apiserver does when its pod or node goes: every
open connection (watches included) is reset, then the port refuses connections for a while,
then the same server answers on the same port again with the objects it had (they live in
etcd, not in the API server).

What a client sees is what it sees in a cluster: ``aiohttp.ClientError``s (a reset stream, a
``ClientConnectorError`` for each refused connect), never an HTTP status. No request is
answered while it is down, and the objects are untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator

import aiohttp.web
import kmock

# SO_LINGER on, 0 seconds: close() sends a RST at once, as a dead peer's kernel answers.
_RESET = struct.pack("ii", 1, 0)


@contextlib.asynccontextmanager
async def down(k8s: kmock.KubernetesEmulator) -> AsyncIterator[None]:
    """The API server of ``k8s`` is down inside the block: its listener is closed (a connect
    is refused) and every connection it had is reset. On leaving, it listens again on the
    same address."""
    server = k8s.servers[0].server  # the emulator's one aiohttp test server
    runner = server.runner
    assert runner is not None and runner.server is not None
    host, port = server.host, server.port
    for site in list(runner.sites):
        await site.stop()  # closes the listening socket: new connects are refused
    for connection in list(runner.server.connections):
        transport = connection.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            transport.abort()
    try:
        yield
    finally:
        site = aiohttp.web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()


async def restart(k8s: kmock.KubernetesEmulator, seconds: float) -> None:
    """Down for ``seconds``, then back."""
    async with down(k8s):
        await asyncio.sleep(seconds)
