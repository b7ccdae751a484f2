"""Run a child command whose output passes through unchanged, and keep its one-line reason when it fails.

A sweep point or a demo step runs ``emotrain train`` / ``evaluate`` as a child (under torchrun for several
ranks). When it fails, what the user needs in ``point.json`` is the child's own one line
(``emotrain train: error: ...``), not the command line that was run. Its stderr is copied through as it
comes (progress bars included) while the last such line is kept.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

ERROR_LINE = re.compile(r"emotrain [a-z]+: error: [^\r\n]*")
TAIL = 64 * 1024  # bytes of stderr kept to find the line in


def run_passing_through(cmd: list[str], env: dict[str, str]) -> tuple[int, str | None]:
    """Run ``cmd``; returns its exit code and the last ``emotrain X: error: ...`` line it wrote to stderr."""
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    tail = b""
    out = getattr(sys.stderr, "buffer", None)
    fd = proc.stderr.fileno()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        if out is not None:
            out.write(chunk)
            out.flush()
        else:  # a replaced sys.stderr (pytest's capture): text only
            sys.stderr.write(chunk.decode("utf-8", "replace"))
        tail = (tail + chunk)[-TAIL:]
    proc.stderr.close()
    code = proc.wait()
    found = ERROR_LINE.findall(tail.decode("utf-8", "replace"))
    return code, (found[-1].strip() if found else None)
