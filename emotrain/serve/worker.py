"""What runs in each inference worker process: the bundle loaded once, each request decoded on its own,
the turns of a batch of requests scored together, each request's turns fused as ``predict`` fuses them.

LitServe calls, per worker: ``setup`` once; then for every batch it gathered (up to ``--max-batch`` requests,
waiting at most ``--batch-timeout-ms`` after the first), ``decode_request`` per request (parse the record,
encode its clips as ``pack`` does, decode them as the loader does), ``predict`` once for the batch (each
model's forward passes over the turns of every request in it, at most ``--max-batch`` turns a pass), and
``encode_response`` per request. Nothing here raises for a bad request: LitServe fails a whole batch on an
exception, so a request's own fault travels as a value (:class:`Failure`) to its own response only.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

import litserve as ls
from litserve.loops.base import _SENTINEL_VALUE
from litserve.loops.simple_loops import BatchedLoop
from litserve.utils import LitAPIStatus, LoopResponseType

from emotrain.errors import UserError

RECORD, MEDIA = "record", "media"


@dataclass
class Failure:
    """A request's own fault: its HTTP status and one line."""

    status: int
    message: str

    def to_response(self) -> dict[str, Any]:
        return {"ok": False, "status": self.status, "error": self.message}


@dataclass
class Finished:
    """A media request, predicted whole while decoding (see :meth:`BundleAPI._media`): its response."""

    response: dict[str, Any]


@dataclass
class Decoded:
    """One request after decoding: each model's turn inputs, and what was skipped in it."""

    turns: dict[str, list[dict[str, Any]]]
    skipped: list[dict[str, str]] = field(default_factory=list)
    decode_seconds: float = 0.0


def read_clips(clips: dict[str, str]) -> dict[str, bytes]:
    """The uploaded clips' bytes by their names in the record (the files sit in the request's private folder
    under names the server chose)."""
    return {name: Path(path).read_bytes() for name, path in clips.items()}


class BlockingBatchLoop(BatchedLoop):
    """LitServe's batched loop, gathering without polling: wait (blocking) for a first request, then take more
    until ``max_batch_size`` or ``batch_timeout`` after the first. LitServe's own gatherer polls the queue
    every millisecond even when idle, which costs a core on a small machine."""

    def get_batch_requests(self, lit_api: ls.LitAPI, request_queue: Any, transport: Any) -> tuple[list, list]:
        from litserve.loops.base import _StopLoopError

        payloads: list = []
        timed_out: list = []
        deadline = None
        while len(payloads) < lit_api.max_batch_size:
            wait = 1.0 if deadline is None else deadline - time.monotonic()
            if deadline is not None and wait <= 0:
                break
            try:
                item = request_queue.get(timeout=wait)
            except Empty:
                if deadline is None:
                    return payloads, timed_out  # idle: let the loop look again
                break
            if item == _SENTINEL_VALUE:
                raise _StopLoopError()
            response_queue_id, uid, timestamp, payload = item
            self.put_response(transport, response_queue_id, uid, (), LitAPIStatus.START, LoopResponseType.REGULAR)
            if lit_api.request_timeout not in (None, False, -1) and time.monotonic() - timestamp > lit_api.request_timeout:
                timed_out.append((response_queue_id, uid))  # its client has been answered 504 already
            else:
                payloads.append((response_queue_id, uid, payload))
            if deadline is None:
                deadline = time.monotonic() + lit_api.batch_timeout
        return payloads, timed_out

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        super().__call__(*args, **kwargs)
        # The loop ended at the shutdown sentinel: leave at once. A normal interpreter exit here spins for
        # seconds (finalizers of the manager's queue proxies) until LitServe kills the process.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


class BundleAPI(ls.LitAPI):
    """The bundle as a LitServe API (one instance per worker process; its settings are plain values so that
    it pickles into spawned workers)."""

    def __init__(self, bundle: str, max_batch: int, batch_timeout_s: float, api_path: str,
                 asr: str | None = None, max_media_bytes: int = 2**30, max_media_s: float = 600.0):
        super().__init__(max_batch_size=max_batch, batch_timeout=batch_timeout_s, api_path=api_path,
                         loop=BlockingBatchLoop())
        self.bundle_dir = bundle
        self.max_batch = max_batch
        self.asr = asr
        self.max_media_bytes, self.max_media_s = max_media_bytes, max_media_s

    def setup(self, device: str) -> None:
        from emotrain.console import quiet_libraries

        # The main process decides when to stop (after draining); a SIGTERM sent to the whole process group
        # must not kill the model under requests still in flight. LitServe's sentinel ends this process.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        quiet_libraries()
        self.load(device)

    def load(self, device: str) -> None:
        """The bundle (and the speech recogniser) on ``device``: what ``setup`` does besides the signals."""
        import torch

        from emotrain.inference.predict import Predictor

        self.predictor = Predictor.load(self.bundle_dir, torch.device(device))
        self.transcriber = None
        if self.asr is not None:
            from emotrain.inference.media.asr import load_transcriber

            self.transcriber = load_transcriber(self.asr)  # once per worker, not per request

    def decode_request(self, request: dict[str, Any], **kwargs: Any) -> Decoded | Finished | Failure:
        start = time.perf_counter()
        try:
            if request.get("kind") == RECORD:
                decoded = self._decode_record(request)
            elif request.get("kind") == MEDIA:
                decoded = self._media(request)
            else:
                return Failure(400, f"unknown request kind {request.get('kind')!r}")
        except UserError as err:
            return Failure(422, _client_names(str(err), request))
        except (OSError, ValueError) as err:  # a request whose files vanished (it timed out) or broke a decoder
            return Failure(422, _client_names(f"{type(err).__name__}: {err}", request))
        if isinstance(decoded, Decoded):
            decoded.decode_seconds = time.perf_counter() - start
        return decoded

    def _media(self, request: dict[str, Any]) -> Finished:
        """A person's recording through :meth:`Predictor.predict_media` (the media path of ``predict``), whole.

        Its decoding and its model passes are interleaved inside that path (it streams an hour-long file
        a few turns at a time), so a media request is predicted here, per request, with forward passes of
        at most ``--max-batch`` turns, rather than sharing passes with other requests in ``predict``."""
        from emotrain.inference.media.decode import MediaLimits

        result = self.predictor.predict_media(
            request.get("media"), audio=request.get("audio"), transcript=request.get("transcript"),
            asr=self.transcriber, speaker=request.get("speaker"), explain=bool(request.get("explain")),
            limits=MediaLimits(self.max_media_bytes, self.max_media_s), batch_size=self.max_batch)
        summary = result.summary()
        summary["media"].pop("files", None)  # the server's own paths
        for stream in ("audio", "video"):
            if summary["media"].get(stream):
                summary["media"][stream].pop("path", None)
        response = {"ok": True, "turns": [t.row(result.classes) for t in result.turns],
                    "utterances": [{"index": u.index, "start": round(u.start, 3), "end": round(u.end, 3),
                                    "speaker": u.speaker, "role": u.role, "text": u.text} for u in result.utterances],
                    "speaker": result.speaker, "notes": [_client_names(n, request) for n in result.notes],
                    "skipped": [{**s.to_dict(), "id": _client_names(s.id, request),
                                 "reason": _client_names(s.reason, request)} for s in result.skipped],
                    "media": summary["media"], "timings": summary["timings"]}
        return Finished(response)

    def _decode_record(self, request: dict[str, Any]) -> Decoded | Failure:
        from emotrain.data.stream import SkipCounter
        from emotrain.inference.predict import conversation_sample, counter_skips

        clips = read_clips(request["clips"])
        sample, skipped = conversation_sample(request["record"], clips)
        if sample is None:
            return Decoded({name: [] for name in self.predictor.bundle.models}, [s.to_dict() for s in skipped])
        counter = SkipCounter(keep_reasons=True)
        turns = self.predictor.expand(sample, counter)
        skipped += counter_skips(counter)
        # Content is checked by decoding: a clip the client sent that does not decode is its error, not a
        # silent fallback to the other medium (``predict`` on a folder lists it and goes on instead).
        bad = [s for s in skipped if s.kind == "clip" and s.reason.startswith("undecodable")]
        if bad:
            return Failure(422, f"clip {bad[0].id}: {bad[0].reason}")
        broken = [s for s in skipped if s.kind == "clip" and "/" in s.id]  # the loader's: "{turn key}/{member}"
        if broken:
            return Failure(422, f"a clip of turn {broken[0].id.split('/')[0]} does not decode: {broken[0].reason}")
        return Decoded(turns, [s.to_dict() for s in skipped])

    def predict(self, batch: list[Decoded | Finished | Failure], **kwargs: Any) -> list[dict[str, Any]]:
        from emotrain.evaluation.gather import Scored

        good = [item for item in batch if isinstance(item, Decoded)]  # media requests came Finished
        names = list(self.predictor.bundle.models)
        start = time.perf_counter()
        joined = {name: [turn for item in good for turn in item.turns[name]] for name in names}
        scored = self.predictor.score_turns(joined, batch_size=self.max_batch)
        model_seconds = time.perf_counter() - start
        batch_info = {"id": uuid.uuid4().hex, "requests": len(good), "model_seconds": model_seconds,
                      "turns": max((len(turns) for turns in joined.values()), default=0)}
        out: list[dict[str, Any]] = []
        offsets = dict.fromkeys(names, 0)
        for item in batch:
            if isinstance(item, Failure):
                out.append(item.to_response())
                continue
            if isinstance(item, Finished):
                out.append(item.response)
                continue
            mine = {}
            for name in names:  # this request's rows, by position: two requests may share conversation ids
                lo, hi = offsets[name], offsets[name] + len(item.turns[name])
                offsets[name] = hi
                whole = scored[name]
                mine[name] = Scored(whole.keys[lo:hi], whole.logits[lo:hi], whole.labels[lo:hi], whole.present[lo:hi])
            turns = self.predictor.combine(mine)
            out.append({"ok": True, "turns": [t.row(self.predictor.classes) for t in turns], "skipped": item.skipped,
                        "decode_seconds": item.decode_seconds, "batch": batch_info})
        return out

    def encode_response(self, output: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return output


def _client_names(text: str, request: dict[str, Any]) -> str:
    """A message with the server's file paths replaced by what the client called them (``names``)."""
    for path, name in sorted(request.get("names", {}).items(), key=lambda kv: -len(kv[0])):
        text = text.replace(path, name)
    return text
