"""Short blocking calls that a time threshold lets through, listed by strict mode.

    python -m loopwatch run --strict examples/strict_calls.py

Each call below takes a millisecond or less, far under any threshold, and each
blocks the event loop for real. The awaits at the end do not block it, and
strict mode does not list them.
"""

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time


async def main(folder: str) -> None:
    time.sleep(0.001)
    with open(os.path.join(folder, "notes.txt"), "w") as notes:
        notes.write("written on the loop")
    os.listdir(folder)
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    sqlite3.connect(os.path.join(folder, "db.sqlite")).close()
    server = await asyncio.start_server(lambda reader, writer: writer.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    socket.create_connection(("127.0.0.1", port)).close()

    # none of these blocks the loop
    await asyncio.sleep(0.001)
    await asyncio.to_thread(time.sleep, 0.001)
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await process.wait()
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(main(folder))
