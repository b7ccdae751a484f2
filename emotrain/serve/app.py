"""The server: LitServe's worker processes, batching loop and ``/health``, with emotrain's ``/v1`` routes in front.

LitServe runs the bundle in its inference workers (``--workers-per-device`` per device; each loads the bundle
once, and ``/health`` answers 200 only when they have) and gathers concurrent requests into batches
(:mod:`emotrain.serve.worker`). Its own generic route (any JSON or form straight into the workers' queue) and
its ``/`` are replaced by routes that do what a service facing people's uploads must do first, in the HTTP
process: admission into a bounded queue (503 with ``Retry-After`` when full), the body read within the upload
limit into a private folder (413), fields and clip names checked (4xx, one line of JSON), media length read
from the files (413), then the request handed to the workers' queue, its answer awaited within the
per-request timeout (504), and the folder deleted. ``SIGTERM`` to the main process drains: new requests get
503 and ``/health`` turns 503, requests in flight are answered, then every process stops and the command
exits 0.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import multiprocessing as mp
import pickle
import signal
import sys
import threading
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from litserve.loops.base import _SENTINEL_VALUE
from litserve.utils import LitAPIStatus, ResponseBufferItem
from starlette.exceptions import HTTPException as StarletteHTTPException

from emotrain.serve import schema
from emotrain.serve.metrics import CONTENT_TYPE, ServeMetrics
from emotrain.serve.options import ServeOptions
from emotrain.serve.uploads import Form, RequestError, private_folder, read_form, remove_folder
from emotrain.serve.worker import MEDIA, RECORD, BundleAPI

INTERNAL_PATH = "/v1/_batched"  # LitServe's route for the API: removed, only our routes feed its queue
RECORD_PATH = "/v1/predict/record"
MEDIA_PATH = "/v1/predict/media"
TRUE, FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
GUARDED = ("/v1/", "/metrics")  # need the API key when there is one; /health and the page do not
DRAIN_GRACE_S = 10.0


def bundle_summary(bundle: Path) -> dict[str, Any]:
    """What ``/v1/info`` says about the bundle: ``bundle.json`` without the fitted fusion parameters."""
    from emotrain.config import to_dict
    from emotrain.inference.bundle import read_info

    info = to_dict(read_info(bundle))
    fusion = info.get("fusion")
    if isinstance(fusion, dict):
        info["fusion"] = {k: fusion[k] for k in ("strategy", "val_scores", "source") if k in fusion}
    info["name"] = bundle.resolve().name
    return info


def media_seconds(path: Path, ext: str) -> float:
    """A file's length from its header (soundfile for wav, PyAV for any other); a file that is not one: RequestError.
    The content is decoded in full later; this only keeps an overlong upload from reaching the workers."""
    try:
        if ext == "wav":  # a record's clip
            import soundfile

            return float(soundfile.info(str(path)).duration)
        import av

        with av.open(str(path)) as container:
            if container.duration is not None:
                return container.duration / 1_000_000
            if not any(st.type in ("audio", "video") for st in container.streams):
                raise ValueError("no audio or video stream")
            timed = [float(st.duration * st.time_base) for st in container.streams if st.duration and st.time_base]
            # a browser's MediaRecorder webm often says no length at all: then the upload limit bounds it
            return max(timed, default=0.0)
    except Exception as err:  # noqa: BLE001 - any decoder failure is the upload's fault
        kind = {"wav": "wav audio", "mp4": "mp4 video"}.get(ext, "audio or video")
        detail = str(err).replace(str(path), "").replace("''", "").strip(" :").splitlines()
        raise RequestError(422, f"{path.name}: not readable as {kind} ({(detail or ['?'])[0][:120]})") from None


def finite(value: Any) -> Any:
    """JSON has no NaN: a probability a model could not give (it could not read the turn) becomes null, as
    ``predict``'s JSONL NaN means."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


class Service:
    """One ``emotrain serve``: build with options, then :meth:`run` (blocks until drained)."""

    def __init__(self, opts: ServeOptions):
        opts.validate()
        self.opts = opts
        self.key = opts.api_key()
        self.summary = bundle_summary(opts.bundle)
        self.page = resources.files("emotrain.serve").joinpath("page.html").read_text(encoding="utf-8")
        self.metrics = ServeMetrics()
        self.metrics.queue_limit.set(opts.queue)
        # shared with the HTTP process (forked from this one): the main process drains on SIGTERM
        self.inflight = mp.Value("i", 0)
        self.draining = mp.Value("b", 0)
        self.api = BundleAPI(str(opts.bundle.resolve()), opts.max_batch, opts.batch_timeout_ms / 1000, INTERNAL_PATH,
                             opts.asr, opts.max_upload_bytes, opts.max_media_s)
        devices: Any = "auto" if opts.devices is None else opts.devices
        self.server = ls.LitServer(self.api, accelerator=opts.accelerator, devices=devices,
                                   workers_per_device=opts.workers_per_device, timeout=opts.timeout_s,
                                   model_metadata={"bundle": self.summary["name"]})
        app = self.server.app
        app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in ("/", INTERNAL_PATH)]
        app.title, app.version = "emotrain serve", "1"
        app.description = ("Emotion per turn of a conversation, from a trained emotrain bundle: the same rows "
                           "`emotrain predict` writes.")
        self._routes()

    # --- HTTP process -------------------------------------------------------------------------------------

    def _error(self, endpoint: str, status: int, message: str, outcome: str,
               headers: dict[str, str] | None = None) -> JSONResponse:
        self.metrics.requests.labels(endpoint, outcome).inc()
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def _routes(self) -> None:
        app = self.server.app

        @app.middleware("http")
        async def guard(request: Request, call_next: Any) -> Response:
            path = request.url.path
            if self.draining.value:
                headers = {"Retry-After": "5", "Connection": "close"}
                return JSONResponse({"error": "the server is shutting down"}, status_code=503, headers=headers)
            if self.key is not None and path.startswith(GUARDED):
                sent = request.headers.get("x-api-key", "")
                if not hmac.compare_digest(sent.encode(), self.key.encode()):
                    self.metrics.requests.labels(path, "unauthorized").inc()
                    return JSONResponse({"error": "missing or wrong X-API-Key header"}, status_code=401)
            return await call_next(request)

        @app.exception_handler(StarletteHTTPException)
        async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
            return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

        @app.exception_handler(Exception)
        async def server_error(request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"error": "internal server error (the server log has the details)"}, status_code=500)

        @app.get("/", response_class=HTMLResponse, include_in_schema=False)
        async def page() -> HTMLResponse:
            return HTMLResponse(self.page)

        @app.get("/metrics", response_class=Response, summary="Prometheus metrics",
                 responses={200: {"content": {"text/plain": {}}}})
        async def metrics() -> Response:
            self.metrics.queue_depth.set(self.inflight.value)
            return Response(self.metrics.text(), media_type=CONTENT_TYPE)

        @app.get("/v1/info", response_model=schema.Info, summary="The bundle and the server's limits")
        async def info() -> dict[str, Any]:
            o = self.opts
            return {"bundle": self.summary, "classes": self.summary["classes"],
                    "endpoints": {"record": RECORD_PATH, "media": MEDIA_PATH}, "asr": self.opts.asr is not None,
                    "limits": {"max_upload_bytes": o.max_upload_bytes, "max_media_seconds": o.max_media_s,
                               "timeout_seconds": o.timeout_s, "queue": o.queue, "max_batch": o.max_batch,
                               "batch_timeout_ms": o.batch_timeout_ms},
                    "auth": self.key is not None}

        @app.post(RECORD_PATH, response_model=schema.Prediction, summary="Predict an AvaMERG conversation record",
                  description=schema.RECORD_DESCRIPTION, openapi_extra=schema.record_body(),
                  responses=schema.ERROR_RESPONSES)
        async def predict_record(request: Request) -> Response:
            return await self._handle(RECORD_PATH, request, self._record_payload)

        @app.post(MEDIA_PATH, response_model=schema.MediaPrediction, summary="Predict a person's own recording",
                  description=schema.MEDIA_DESCRIPTION, openapi_extra=schema.media_body(),
                  responses=schema.ERROR_RESPONSES)
        async def predict_media(request: Request) -> Response:
            return await self._handle(MEDIA_PATH, request, self._media_payload)

    async def _handle(self, endpoint: str, request: Request, build: Any) -> Response:
        """Admission, body, checks, the workers' answer within the timeout; the folder always removed."""
        with self.inflight.get_lock():
            if self.inflight.value >= self.opts.queue:
                busy = True
            else:
                busy = False
                self.inflight.value += 1
        if busy:
            return self._error(endpoint, 503, f"the server is busy ({self.opts.queue} requests queued); retry later",
                               "busy", {"Retry-After": "1"})
        start = time.perf_counter()
        folder = private_folder()
        try:
            async with asyncio.timeout(self.opts.timeout_s):
                length = request.headers.get("content-length")
                if length and length.isdigit() and int(length) > self.opts.max_upload_bytes:
                    raise RequestError(413, f"the upload is larger than the server's limit of "
                                            f"{self.opts.max_upload_mb:g} MiB")
                form = await read_form(request.headers.get("content-type", ""), request.stream(), folder,
                                       self.opts.max_upload_bytes)
                payload = await build(form)
                answer = await self._submit(payload)
        except TimeoutError:
            return self._error(endpoint, 504, f"the request took longer than the server's limit of "
                                              f"{self.opts.timeout_s:g} s", "timeout")
        except RequestError as err:
            outcome = {413: "too_large", 503: "busy"}.get(err.status, "client_error")
            return self._error(endpoint, err.status, err.message, outcome, err.headers)
        finally:
            remove_folder(folder)
            with self.inflight.get_lock():
                self.inflight.value -= 1
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        if not answer.get("ok"):
            status = int(answer.get("status", 500))
            outcome = "server_error" if status >= 500 else "client_error"
            return self._error(endpoint, status, str(answer.get("error", "prediction failed")), outcome)
        if "batch" in answer:
            self.metrics.observe_batch(answer.pop("batch"))
            self.metrics.decode_seconds.observe(answer.pop("decode_seconds", 0.0))
        self.metrics.requests.labels(endpoint, "ok").inc()
        answer.pop("ok")
        return JSONResponse(finite({"classes": self.summary["classes"], **answer}))

    async def _submit(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Into LitServe's request queue; the worker's answer (a dict) when it comes."""
        server = self.server
        uid = uuid.uuid4().hex
        item = ResponseBufferItem(asyncio.Event())
        server.response_buffer[uid] = item
        try:
            queue = server._get_request_queue(INTERNAL_PATH)
            await asyncio.to_thread(queue.put, (server.app.response_queue_id, uid, time.monotonic(), payload))
            await item.event.wait()
        finally:
            server.response_buffer.pop(uid, None)
        response, status = item.response
        if status == LitAPIStatus.ERROR:
            if isinstance(response, bytes):
                try:
                    response = pickle.loads(response)  # our own worker's exception, never a client's bytes
                except Exception:  # noqa: BLE001
                    pass
            code = getattr(response, "status_code", 500)
            return {"ok": False, "status": 504 if code == 504 else 500,
                    "error": "the request took too long in the queue" if code == 504
                    else "internal error while predicting (the server log has the details)"}
        return response

    async def _record_payload(self, form: Form) -> dict[str, Any]:
        from emotrain.data.clips import CLIP_NAME

        unknown = sorted((set(form.fields) | {p.field for p in form.files}) - {"record", "clips"})
        if unknown:
            raise RequestError(400, f"unknown form field(s) {', '.join(unknown)}: this endpoint takes record and clips")
        text = form.text("record")
        if text is None:
            raise RequestError(400, "no record: send the conversation's JSON as the form field 'record'")
        try:
            record = json.loads(text)
        except ValueError as err:
            raise RequestError(400, f"record: not JSON ({err})") from None
        cid = str(record.get("conversation_id")) if isinstance(record, dict) else None
        clips: dict[str, str] = {}
        seconds = 0.0
        for part in form.files_of("clips"):
            match = CLIP_NAME.match(part.filename or "")
            if match is None:
                raise RequestError(422, f"clip file name {part.filename!r} does not follow the corpus's rule "
                                        "dia{conversation_id}utt{index}_{ID}.wav or .mp4")
            if match["cid"] != cid:
                raise RequestError(422, f"clip {part.filename} is not a clip of conversation {cid!r}")
            if part.filename in clips:
                raise RequestError(400, f"clip {part.filename} was sent twice")
            if part.size == 0:
                raise RequestError(422, f"clip {part.filename} is empty")
            try:
                seconds += await asyncio.to_thread(media_seconds, part.path, match["ext"])
            except RequestError as err:
                raise RequestError(err.status, err.message.replace(part.path.name, part.filename, 1)) from None
            clips[part.filename] = str(part.path)
        if seconds > self.opts.max_media_s:
            raise RequestError(413, f"the clips last {seconds:.1f} s, more than the server's limit of "
                                    f"{self.opts.max_media_s:g} s")
        return {"kind": RECORD, "record": record, "clips": clips}

    async def _media_payload(self, form: Form) -> dict[str, Any]:
        unknown = sorted((set(form.fields) | {p.field for p in form.files})
                         - {"media", "audio", "transcript", "speaker", "explain"})
        if unknown:
            raise RequestError(400, f"unknown form field(s) {', '.join(unknown)}: this endpoint takes media, audio, "
                                    "transcript, speaker and explain")
        folder = form.folder
        payload: dict[str, Any] = {"kind": MEDIA, "names": {str(folder): "upload"}}
        seconds = []
        for name in ("media", "audio"):
            if form.fields.get(name):
                raise RequestError(400, f"{name} must be a file part (curl -F {name}=@FILE)")
            parts = form.files_of(name)
            if len(parts) > 1:
                raise RequestError(400, f"the field {name!r} was sent {len(parts)} times; send one file")
            if not parts:
                continue
            if parts[0].size == 0:
                raise RequestError(422, f"{name}: the file is empty")
            # a name of the server's choosing (its stem names the conversation: "upload")
            target = folder / name / "upload"
            target.parent.mkdir()
            parts[0].path.rename(target)
            label = parts[0].filename or name
            payload[name], payload["names"][str(target)] = str(target), label
            try:
                seconds.append(await asyncio.to_thread(media_seconds, target, "any"))
            except RequestError as err:
                raise RequestError(err.status, err.message.replace(target.name, label, 1)) from None
        if "media" not in payload and "audio" not in payload:
            raise RequestError(400, "no media: send a video or audio file as the field 'media' (and/or 'audio')")
        if max(seconds) > self.opts.max_media_s:
            raise RequestError(413, f"the media last {max(seconds):.1f} s, more than the server's limit of "
                                    f"{self.opts.max_media_s:g} s")
        transcript = form.text("transcript")
        if transcript is not None and transcript.strip():
            target = folder / "transcript"
            target.write_text(transcript, encoding="utf-8")
            payload["transcript"], payload["names"][str(target)] = str(target), "the transcript"
        elif self.opts.asr is None:
            raise RequestError(400, "no transcript: send the field 'transcript' (SRT, WebVTT, a JSON list of "
                                    "{start, end, speaker, text}, or plain text for one utterance); this server "
                                    "has no speech recognition (--asr)")
        speaker = form.text("speaker")
        payload["speaker"] = speaker.strip() if speaker and speaker.strip() else None
        explain = (form.text("explain") or "").strip().lower()
        if explain not in TRUE + FALSE:
            raise RequestError(400, f"explain must be true or false, not {explain!r}")
        payload["explain"] = explain in TRUE
        return payload

    # --- main process -------------------------------------------------------------------------------------

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if self.draining.value:
            return
        self.draining.value = 1
        print("emotrain serve: SIGTERM: draining (new requests get 503)", file=sys.stderr, flush=True)
        threading.Thread(target=self._drain, name="emotrain-drain", daemon=True).start()

    def _drain(self) -> None:
        deadline = time.monotonic() + self.opts.timeout_s + DRAIN_GRACE_S
        while self.inflight.value > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        queue = self.server._get_request_queue(INTERNAL_PATH)
        for _ in self.server.inference_workers:  # each worker's loop ends at a sentinel (they ignore SIGTERM)
            queue.put(_SENTINEL_VALUE)
        self.server._shutdown_event.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        o = self.opts
        print(f"emotrain serve: loading {o.bundle} ({o.workers_per_device} worker(s) per device); "
              f"http://{o.bind if o.bind != '::' else '[::]'}:{o.port}/ once GET /health answers 200",
              file=sys.stderr, flush=True)
        self.server.run(host=o.bind, port=o.port, num_api_servers=1, log_level=o.log_level,
                        generate_client_file=False, api_server_worker_type="process")
        print("emotrain serve: stopped", file=sys.stderr, flush=True)
        return 0

