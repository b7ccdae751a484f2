"""A real ``emotrain serve`` process on a loopback port, and a small stdlib HTTP client for it (tests and
``benchmarks/serve_load.py``)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    """(field, file name or None, bytes) parts -> the body and its Content-Type."""
    boundary = uuid.uuid4().hex
    out = bytearray()
    for name, filename, data in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"Content-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = 120.0) -> Reply:
    """One HTTP request on a fresh connection; a server that answers before reading the whole body (413) is
    still read."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        try:
            conn.request(method, path, body=body, headers=headers or {})
        except (BrokenPipeError, ConnectionResetError):
            pass  # it answered early and closed: the answer is in the socket
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def post_form(port: int, path: str, parts: list[tuple[str, str | None, bytes]], headers: dict[str, str] | None = None,
              timeout: float = 120.0) -> Reply:
    body, content_type = multipart(parts)
    return request(port, "POST", path, body, {"Content-Type": content_type, **(headers or {})}, timeout)


def record_parts(corpus: Path, record: dict) -> list[tuple[str, str | None, bytes]]:
    """A conversation record of the synthetic corpus with its clips, as /v1/predict/record takes them."""
    cid = record["conversation_id"]
    parts: list[tuple[str, str | None, bytes]] = [("record", "record.json", json.dumps(record).encode())]
    for folder in ("audio_v5_0", "video_v5_0"):
        for clip in sorted((corpus / folder).glob(f"dia{cid}utt*")):
            parts.append(("clips", clip.name, clip.read_bytes()))
    return parts


class ServerProcess:
    """``emotrain serve BUNDLE --port P ARGS``, its output in ``log``; :meth:`wait_ready` polls ``/health``."""

    def __init__(self, bundle: Path, log: Path, *args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.log = log
        cmd = [sys.executable, "-m", "emotrain.cli", "serve", str(bundle), "--port", str(self.port), *args]
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if request(self.port, "GET", "/health", timeout=5).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the server was not ready within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM to the main process; its exit code (after SIGKILL to the whole group if it hung)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                self._out.close()
                return None
        self._out.close()
        return self.proc.returncode
