"""Small socket and process helpers the server tests share."""

import signal
import socket
import subprocess


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dechunk(body: bytes) -> bytes:
    """The payload of an HTTP/1.1 chunked body (chunk extensions and trailers are not expected)."""
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, body = out + body[:size], body[size + 2:]
    return out


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a server the test started: SIGTERM (a graceful shutdown), then SIGKILL if it
    has not exited within `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
