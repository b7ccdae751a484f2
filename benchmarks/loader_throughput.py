"""Loader throughput: turns/s from packed shards, against the seed's per-file loading and the decode limit.

On one AvaMERG-layout corpus (synthesised with the default ``SynthSpec``, or ``--video-size`` /
``--fps`` closer to real talking-face clips, and packed into a temp folder unless
``--corpus``/``--shards`` are given), for a model reading both audio and video
(and, with ``--modalities``, per modality), in eval mode, with the same worker count:

(a) ``build_loader`` over the shards: turn batches as training and evaluation get them
    (uint8 frames, which the video model normalises on its device; clips smaller than
    ``image_size``, such as the default 64 px synthetic ones, travel at their own size and the
    model scales them up there too).
(b) naive per-file loading from the raw folder, as the seed project did: a map-style Dataset
    over turn keys whose ``__getitem__`` scans the parsed JSON list for the turn, decodes the
    *whole* mp4 at its own size, picks 8 frames, resizes and normalises them, reads and
    resamples every wav of the turn's utterances from its file, tokenises padded to the
    maxima; a DataLoader with the same ``num_workers`` and batch size.
(c) the decode limit: the clips the loader decodes (each clip once per conversation, as (a)
    does) timed with ``decode_limit.rate`` in a tight loop over the same shard bytes, in as
    many concurrent processes as there are workers, expressed as turns/s.

(a) and (b) yield the same turns (the keys (a) produced). Rates are steady-state: turns after
the first batch over the time after it, so worker start-up (forkserver imports for (a), fork
for (b)) is left out, as the decode limit has none; whole-pass figures are printed too. Each
of (a) and (b) makes ``--repeats`` passes with a new loader and reports the median one.
Goals: (a) >= 3x (b) and (a) >= 70% of (c).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import soundfile  # noqa: E402
import torch  # noqa: E402
import webdataset as wds  # noqa: E402

from decode_limit import rate  # noqa: E402
from emotrain.data.avamerg import MediaDirs  # noqa: E402
from emotrain.data.media import (  # noqa: E402
    crop,
    decode_audio,
    decode_video,
    frame_indices,
    resample_16k,
)
from emotrain.data.pack import PackOptions, pack  # noqa: E402
from emotrain.data.schema import UNLABELLED, mp4_member, wav_member  # noqa: E402
from emotrain.data.splits import SplitRecipe  # noqa: E402
from emotrain.data.manifest import Manifest  # noqa: E402
from emotrain.data.stream import DataConfig, Modalities, build_loader  # noqa: E402
from emotrain.data.synthetic import SynthSpec, generate_corpus  # noqa: E402
from emotrain.data.text import TextConfig, context_text, load_tokenizer  # noqa: E402
from emotrain.labels import LabelScheme, load_scheme  # noqa: E402
from emotrain.models.model_config import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODALITY_SETS = {"both": Modalities(True, True), "audio": Modalities(True, False), "video": Modalities(False, True)}


@dataclass
class Pass:
    """One timed pass of a loader over the corpus."""

    turns: int
    seconds: float
    first_batch_seconds: float
    first_batch_turns: int

    @property
    def overall(self) -> float:
        return self.turns / self.seconds

    @property
    def steady(self) -> float:
        """Turns/s after the first batch (leaves out worker start-up)."""
        return (self.turns - self.first_batch_turns) / max(self.seconds - self.first_batch_seconds, 1e-9)


def median_pass(make_loader: Callable[[], Iterable[dict[str, Any]]], repeats: int) -> tuple[Pass, list[str]]:
    """The pass with the median steady rate of ``repeats`` passes, each over a new loader (this machine is noisy)."""
    passes = sorted((timed_pass(make_loader()) for _ in range(repeats)), key=lambda p: p[0].steady)
    return passes[len(passes) // 2]


def timed_pass(loader: Iterable[dict[str, Any]]) -> tuple[Pass, list[str]]:
    keys: list[str] = []
    first_at, first_turns = 0.0, 0
    start = time.perf_counter()
    for batch in loader:
        n = len(batch["keys"])
        if not keys:
            first_at, first_turns = time.perf_counter() - start, n
        keys.extend(batch["keys"])
    return Pass(len(keys), time.perf_counter() - start, first_at, first_turns), keys


# --- (b) the seed project's loading ---------------------------------------------------------------


class NaiveTurns(torch.utils.data.Dataset):
    """Turns loaded file by file from the raw AvaMERG folder, the way the seed project did it."""

    def __init__(self, json_path: Path, media: MediaDirs, keys: list[str], scheme: LabelScheme, cfg: DataConfig,
                 modalities: Modalities):
        self.scheme = scheme
        self.records = json.loads(json_path.read_text(encoding="utf-8"))
        self.media, self.keys, self.cfg, self.modalities = media, keys, cfg, modalities
        self.tokenizer = load_tokenizer(cfg.text.tokenizer)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return len(self.keys)

    def _audio(self, path: Path) -> np.ndarray:
        samples, sample_rate = soundfile.read(path, dtype="float32", always_2d=True)
        mono = resample_16k(np.ascontiguousarray(samples.mean(axis=1)), sample_rate)
        return crop(mono, self.cfg.audio.max_samples, False, np.random.default_rng(0))

    def _video(self, path: Path) -> torch.Tensor:
        import decord

        reader = decord.VideoReader(str(path))
        frames = reader.get_batch(list(range(len(reader)))).asnumpy()  # every frame, full size
        picked = frames[frame_indices(len(frames), self.cfg.video.num_frames, False, np.random.default_rng(0))]
        video = torch.from_numpy(picked).permute(0, 3, 1, 2).float() / 255.0
        size = self.cfg.video.image_size
        video = torch.nn.functional.interpolate(video, size=(size, size), mode="bilinear", align_corners=False)
        return (video - self.mean) / self.std

    def __getitem__(self, i: int) -> dict[str, Any]:
        cid, turn_id = self.keys[i].rsplit("_", 1)
        record = next(r for r in self.records if str(r["conversation_id"]) == cid)
        turn = next(t for t in record["turns"] if t["turn_id"] == int(turn_id))
        text, slots = self.cfg.text, self.cfg.text.max_utterances
        history = turn["dialogue_history"][-slots:]
        utts = self.tokenizer([u["utterance"] for u in history], padding="max_length", truncation=True,
                              max_length=text.max_utterance_tokens, return_tensors="pt")
        ctx = self.tokenizer(context_text({"context": turn.get("context", "")}, turn, text.context_fields),
                             padding="max_length", truncation=True, max_length=text.max_context_tokens,
                             return_tensors="pt")
        item: dict[str, Any] = {
            "keys": self.keys[i],
            "labels": self.scheme.index(turn["chain_of_empathy"]["speaker_emotion"]),
            "utt_input_ids": torch.zeros(slots, text.max_utterance_tokens, dtype=torch.long),
            "utt_attention_mask": torch.zeros(slots, text.max_utterance_tokens, dtype=torch.long),
            "ctx_input_ids": ctx["input_ids"][0],
            "ctx_attention_mask": ctx["attention_mask"][0],
        }
        item["utt_input_ids"][: len(history)] = utts["input_ids"]
        item["utt_attention_mask"][: len(history)] = utts["attention_mask"]
        stems = [f"dia{cid}utt{u['index']}_{record[u['role'] + '_profile']['ID']}" for u in history]
        if self.modalities.audio:
            audio = torch.zeros(slots, self.cfg.audio.max_samples)  # padded to the limit, as the seed did
            lengths = torch.zeros(slots, dtype=torch.long)
            for j, stem in enumerate(stems):
                clip = self._audio(self.media.wav(stem))
                audio[j, : len(clip)], lengths[j] = torch.from_numpy(clip), len(clip)
            item.update(audio=audio, audio_lengths=lengths)
        if self.modalities.video:
            item["video"] = self._video(self.media.mp4(stems[-1]))
        return item


# --- (c) the decode limit ---------------------------------------------------------------------------


@dataclass
class Clips:
    """The clips the loader decodes for a split (each once per conversation) and the turns they serve."""

    wavs: list[bytes]
    mp4s: list[bytes]
    turns: int


def loader_clips(urls: list[str], modalities: Modalities, max_utterances: int) -> Clips:
    """Walk the shards as the loader's turn expansion does and collect the bytes it would decode."""
    clips = Clips([], [], 0)
    for sample in wds.tarfile_to_samples()(iter({"url": u} for u in urls)):
        record, labels = json.loads(sample["json"]), json.loads(sample["labels.json"])
        indices = sorted(u["index"] for u in record["utterances"])
        wav_needed: set[int] = set()
        mp4_needed: set[int] = set()
        for turn, label in zip(record["turns"], labels):
            if label == UNLABELLED:
                continue
            clips.turns += 1
            last = turn["last_utterance"]
            wav_needed.update([i for i in indices if i <= last][-max_utterances:])
            mp4_needed.add(last)
        if modalities.audio:
            clips.wavs += [sample[wav_member(i)] for i in sorted(wav_needed) if wav_member(i) in sample]
        if modalities.video:
            clips.mp4s += [sample[mp4_member(i)] for i in sorted(mp4_needed) if mp4_member(i) in sample]
    return clips


def clip_rates(job: tuple[list[bytes], list[bytes], DataConfig, float]) -> tuple[float, float]:
    """wav and mp4 clips/s of one process (as one loader worker: one thread), 0 for none."""
    wavs, mp4s, cfg, min_seconds = job
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    wav_rate = rate(lambda d: decode_audio(d, cfg.audio, False, rng), wavs, min_seconds)[0] if wavs else 0.0
    mp4_rate = rate(lambda d: decode_video(d, cfg.video, False, rng), mp4s, min_seconds)[0] if mp4s else 0.0
    return wav_rate, mp4_rate


def decode_limit(clips: Clips, cfg: DataConfig, processes: int, min_seconds: float) -> tuple[float, float, float]:
    """Turns/s when only decoding, with ``processes`` concurrent decoders; and their wav, mp4 clips/s."""
    jobs = [(clips.wavs[i::processes], clips.mp4s[i::processes], cfg, min_seconds) for i in range(processes)]
    with multiprocessing.get_context("forkserver").Pool(processes) as pool:
        rates = pool.map(clip_rates, jobs)
    wav_rate, mp4_rate = sum(r[0] for r in rates), sum(r[1] for r in rates)
    seconds = (len(clips.wavs) / wav_rate if clips.wavs else 0.0) + (len(clips.mp4s) / mp4_rate if clips.mp4s else 0.0)
    return clips.turns / seconds, wav_rate, mp4_rate


# --- the comparison -------------------------------------------------------------------------------


def pass_line(name: str, p: Pass) -> str:
    return (f"{name:<44} {p.steady:8.1f} turns/s  ({p.turns} turns in {p.seconds:.1f} s = {p.overall:.1f} turns/s "
            f"overall; first batch after {p.first_batch_seconds:.1f} s)")


def compare(label: str, modalities: Modalities, cfg: DataConfig, split: str, corpus: Path, batch_size: int,
            min_seconds: float, repeats: int) -> None:
    print(f"== {label} (audio={modalities.audio}, video={modalities.video}) ==")
    manifest = Manifest.load(cfg.shards, split)
    shards, keys = median_pass(lambda: build_loader(cfg, split, modalities, batch_size, train=False)[0], repeats)
    scheme = manifest.scheme
    dataset = NaiveTurns(corpus / "train.json", MediaDirs.locate(corpus), keys, scheme, cfg, modalities)
    naive, naive_keys = median_pass(
        lambda: torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=cfg.num_workers), repeats)
    assert naive_keys == keys, "the naive loader must serve the same turns"
    clips = loader_clips(manifest.shard_urls(), modalities, cfg.text.max_utterances)
    limit, wav_rate, mp4_rate = decode_limit(clips, cfg, max(1, cfg.num_workers), min_seconds)
    start = time.perf_counter()
    next(iter(build_loader(cfg, split, modalities, batch_size, train=False)[0]))
    later_first = time.perf_counter() - start
    print(pass_line("(a) shards through build_loader", shards))
    print(f"{'':<44} a later loader in the same process: first batch after {later_first:.1f} s (warm fork server)")
    print(pass_line("(b) naive per-file from the raw folder", naive))
    per_turn = f"{len(clips.wavs) / clips.turns:.2f} wav + {len(clips.mp4s) / clips.turns:.2f} mp4 per turn"
    print(f"{'(c) decode limit (decord + soundfile)':<44} {limit:8.1f} turns/s  ({per_turn}; "
          f"{wav_rate:.0f} wav/s, {mp4_rate:.1f} mp4/s over {max(1, cfg.num_workers)} processes)")
    print(f"(a)/(b) = {shards.steady / naive.steady:.2f}x (goal >= 3x)   "
          f"(a)/(c) = {100 * shards.steady / limit:.0f}% (goal >= 70%)")


def prepare(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path, str]:
    """The raw corpus and the shards folder: given, packed from the given corpus, or synthesised and packed."""
    corpus = args.corpus
    if corpus is None:
        corpus = tmp / "corpus"
        spec = SynthSpec(video_size=args.video_size, fps=args.fps)
        generate_corpus(corpus, args.conversations, seed=args.seed, spec=spec, workers=2, progress=False)
        origin = (f"{args.conversations} conversations synthesised (seed {args.seed}; mp4s {spec.video_size} px at "
                  f"{spec.fps} fps, {spec.min_seconds:g}-{spec.max_seconds:g} s)")
    else:
        origin = f"corpus {corpus}"
    shards = args.shards
    if shards is None:
        shards = tmp / "shards" / "bench"
        pack(PackOptions(source=corpus, out=shards, scheme=load_scheme("ekman7"), recipe=SplitRecipe(0.0, 0.0, 0),
                         workers=2, max_per_shard=args.max_per_shard, progress=False))
        origin += f", packed all into train, {args.max_per_shard} conversations per shard"
    return corpus, shards, origin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, help="an AvaMERG-layout folder (default: synthesise one)")
    parser.add_argument("--shards", type=Path, help="shards packed from --corpus (default: pack it into a temp folder)")
    parser.add_argument("--split", default="train", help="split of --shards to read (default train)")
    parser.add_argument("--conversations", type=int, default=600,
                        help="conversations to synthesise (default %(default)s: a pass of (a) lasts several seconds)")
    parser.add_argument("--seed", type=int, default=0, help="synthesis seed")
    parser.add_argument("--video-size", type=int, default=SynthSpec.video_size,
                        help="synthesised mp4 side in px (default %(default)s; talking-face clips are larger)")
    parser.add_argument("--fps", type=int, default=SynthSpec.fps,
                        help="synthesised mp4 frame rate (default %(default)s; real clips are about 25)")
    parser.add_argument("--max-per-shard", type=int, default=10, help="conversations per shard when packing")
    parser.add_argument("--workers", type=int, default=2, help="loader workers for (a) and (b), processes for (c)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tokenizer", default=str(ROOT / "configs/tokenizers/tiny-wordpiece"))
    parser.add_argument("--modalities", nargs="+", choices=list(MODALITY_SETS), default=["both"],
                        help="which media the model reads; several for one comparison each (default both)")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="time each decode-limit loop at least this long")
    parser.add_argument("--repeats", type=int, default=3, help="passes of (a) and (b) each; the median is reported")
    args = parser.parse_args()
    if args.shards is not None and args.corpus is None:
        parser.error("--shards needs --corpus, the raw folder they were packed from (for the naive loader)")
    if args.workers < 0 or args.batch_size < 1 or args.repeats < 1:
        parser.error("--workers must be >= 0, --batch-size and --repeats >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        corpus, shards, origin = prepare(args, Path(tmp))
        cfg = DataConfig(shards=str(shards), text=TextConfig(tokenizer=args.tokenizer), num_workers=args.workers)
        print(origin)
        print(f"eval mode, batch {args.batch_size}, {args.workers} workers; video {cfg.video.num_frames} frames at "
              f"{cfg.video.image_size} px, audio {cfg.audio.max_seconds:g} s, up to {cfg.text.max_utterances} "
              f"utterances per turn; torch {torch.__version__}, {os.cpu_count()} CPUs")
        for name in args.modalities:
            compare(name, MODALITY_SETS[name], cfg, args.split, corpus, args.batch_size, args.min_seconds, args.repeats)


if __name__ == "__main__":
    main()
