"""``emotrain serve BUNDLE``: the bundle behind HTTP, with a page at ``/`` (see :mod:`emotrain.serve`).

Built on LitServe: inference workers per device that load the bundle once, dynamic batching of concurrent
requests, ``/health``; emotrain adds the ``/v1`` routes, the limits, ``/metrics`` and the page.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="a bundle folder (`emotrain bundle --out`)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="127.0.0.1 (default), or 0.0.0.0 / :: for every interface (needs --api-key-file or --insecure)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch", type=int, default=8,
                        help="requests gathered into one batch, and turns per model forward pass (default: %(default)s)")
    parser.add_argument("--batch-timeout-ms", type=float, default=10.0,
                        help="the longest a batch waits to fill after its first request (default: %(default)s)")
    parser.add_argument("--workers-per-device", type=int, default=1, help="inference processes per device, each "
                        "with its own copy of the bundle (default: %(default)s)")
    parser.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--devices", type=int, help="how many devices of the accelerator (default: all)")
    parser.add_argument("--queue", type=int, default=64,
                        help="prediction requests admitted at once; more are answered 503 (default: %(default)s)")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="per request (default: %(default)s)")
    parser.add_argument("--max-upload-mb", type=float, default=64.0, help="per request (default: %(default)s)")
    parser.add_argument("--max-media-s", type=float, default=600.0,
                        help="seconds of media per request (default: %(default)s)")
    parser.add_argument("--asr", help="a Whisper model (hub name or local folder) for media requests sent "
                        "without a transcript, as in `predict` (default: a transcript is required)")
    parser.add_argument("--api-key-file", type=Path, help="a file whose first line is the key clients send as X-API-Key")
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback --host without a key (only behind a proxy that authenticates)")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    from emotrain.serve.app import Service
    from emotrain.serve.options import ServeOptions

    opts = ServeOptions(bundle=args.bundle, host=args.host, port=args.port, max_batch=args.max_batch,
                        batch_timeout_ms=args.batch_timeout_ms, workers_per_device=args.workers_per_device,
                        accelerator=args.accelerator, devices=args.devices, queue=args.queue, timeout_s=args.timeout_s,
                        max_upload_mb=args.max_upload_mb, max_media_s=args.max_media_s, api_key_file=args.api_key_file,
                        insecure=args.insecure, log_level=args.log_level, asr=args.asr)
    return Service(opts).run()
