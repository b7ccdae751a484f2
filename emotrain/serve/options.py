"""``emotrain serve``'s settings, checked before anything starts.

Binding to anything but the loopback address exposes the model to the network: it needs an API key
(``--api-key-file``, a file holding one line; requests then need ``X-API-Key``), or ``--insecure`` to say
that the network in front is trusted. LitServe binds 127.0.0.1, 0.0.0.0 or ``::`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from emotrain.errors import UserError

LOOPBACK = "127.0.0.1"
HOSTS = {"127.0.0.1": LOOPBACK, "localhost": LOOPBACK, "0.0.0.0": "0.0.0.0", "::": "::"}
MIN_KEY_CHARS = 16


@dataclass
class ServeOptions:
    bundle: Path
    host: str = LOOPBACK
    port: int = 8000
    max_batch: int = 8  # requests gathered per batch, and turns per model forward pass
    batch_timeout_ms: float = 10.0  # the longest a batch waits to fill after its first request
    workers_per_device: int = 1
    accelerator: str = "auto"  # auto | cpu | cuda
    devices: int | None = None  # None: every device of the accelerator
    queue: int = 64  # prediction requests admitted at once; more get 503 with Retry-After
    timeout_s: float = 60.0  # per request, from admission to answer; later: 504
    max_upload_mb: float = 64.0
    max_media_s: float = 600.0  # seconds of media per request (read from the files' headers)
    asr: str | None = None  # a Whisper hub name or folder: media requests without a transcript
    api_key_file: Path | None = None
    insecure: bool = False
    log_level: str = "warning"

    @property
    def bind(self) -> str:
        return HOSTS[self.host]

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    def validate(self) -> None:
        """One line for the first thing wrong (before a bundle is loaded or a port bound)."""
        if not self.bundle.is_dir():
            raise UserError(f"bundle not found: {self.bundle}")
        if self.host not in HOSTS:
            raise UserError(f"--host {self.host!r}: LitServe binds {', '.join(sorted(set(HOSTS.values())))} "
                            "(or localhost); use 0.0.0.0 (or ::) for every interface")
        if not 1024 <= self.port <= 65535:
            raise UserError(f"--port must be in 1024..65535, got {self.port}")
        checks = [(self.max_batch >= 1, "--max-batch must be >= 1"),
                  (self.batch_timeout_ms >= 0, "--batch-timeout-ms must be >= 0"),
                  (self.workers_per_device >= 1, "--workers-per-device must be >= 1"),
                  (self.accelerator in ("auto", "cpu", "cuda"), "--accelerator must be auto, cpu or cuda"),
                  (self.devices is None or self.devices >= 1, "--devices must be >= 1"),
                  (self.queue >= 1, "--queue must be >= 1"),
                  (self.timeout_s > 0, "--timeout-s must be > 0"),
                  (self.batch_timeout_ms / 1000 < self.timeout_s, "--batch-timeout-ms must be shorter than --timeout-s"),
                  (self.max_upload_mb > 0, "--max-upload-mb must be > 0"),
                  (self.max_media_s > 0, "--max-media-s must be > 0")]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        if self.bind != LOOPBACK and self.api_key_file is None and not self.insecure:
            raise UserError(f"--host {self.host} serves the network: give --api-key-file FILE (clients then send "
                            "X-API-Key), or --insecure if a trusted proxy in front does the authentication")

    def api_key(self) -> str | None:
        """The key clients must send, from ``--api-key-file`` (its first line); None without one."""
        if self.api_key_file is None:
            return None
        try:
            lines = self.api_key_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"--api-key-file {self.api_key_file}: not readable ({err})") from None
        key = lines[0].strip() if lines else ""
        if len(key) < MIN_KEY_CHARS:
            raise UserError(f"--api-key-file {self.api_key_file}: the key (its first line) must have at least "
                            f"{MIN_KEY_CHARS} characters (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
        return key
