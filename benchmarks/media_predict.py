"""``predict --media`` on long recordings: real-time factor and peak memory.

A synthetic conversation video is made from the clips of a synthetic corpus (the tests' tiny corpus,
utterances one after the other, conversation after conversation, until the wanted length): H.264 video at
``--size`` px square and ``--fps`` (each clip's frames scaled up and repeated in time), 16 kHz PCM audio in
an mkv, and an SRT file with one cue per utterance and the speaker named (``Alice:`` / ``Bob:``). A bundle
(``--bundle``, or by default the tests' stand-in system: the demo's tiny models with seeded weights,
evaluated and fused for real, see ``tests/predict_system.py``) predicts it through
``Predictor.predict_media``, each file in a fresh process:

- real-time factor: media seconds per wall second of ``predict_media`` (the model loaded beforehand), and
  where the time goes: decode (PyAV decoding both streams, the chosen frames converted and stored,
  audio resampled), preprocessing (the pack's encoding, the loader's expansion and collate) and the models;
- peak resident memory (``ru_maxrss``) of the process for a ``--minutes`` file and a ``--long-minutes`` one:
  the recording is decoded span by span and scored a few turns at a time, so it should not grow with length
  beyond the outputs (a few hundred bytes of probabilities per turn).

    python benchmarks/media_predict.py                  # 10 and 60 minutes, 224 px, 25 fps
    python benchmarks/media_predict.py --minutes 2 --long-minutes 6 --size 128
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def write_long_video(corpus: Path, out: Path, minutes: float, size: int, fps: int) -> tuple[Path, Path, int]:
    """The video, its SRT and the number of cues (see the module docstring)."""
    import av
    import soundfile
    import torch
    import torchaudio.functional as AF

    from emotrain.inference.media.transcript import format_time

    records = json.loads((corpus / "train.json").read_text(encoding="utf-8"))
    utterances = []
    for record in records:
        last = max(record["turns"], key=lambda t: len(t["dialogue_history"]))["dialogue_history"]
        utterances += [(record["conversation_id"], u) for u in last]
    total, rate = minutes * 60.0, 16_000
    path, srt = out.with_suffix(".mkv"), out.with_suffix(".srt")
    cues, t, k = [], 0.0, 0
    cache: dict[tuple[str, int], tuple[np.ndarray, list[np.ndarray]]] = {}
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "23", "preset": "ultrafast"}
        audio = container.add_stream("pcm_s16le", rate=rate, layout="mono")
        vpts = apts = 0
        while t < total:
            cid, utt = utterances[k % len(utterances)]
            k += 1
            key = (cid, utt["index"])
            if key not in cache:
                wav = next((corpus / "audio_v5_0").glob(f"dia{cid}utt{utt['index']}_*.wav"))
                samples, clip_rate = soundfile.read(wav, dtype="float32")
                if clip_rate != rate:
                    samples = AF.resample(torch.from_numpy(samples), clip_rate, rate).numpy()
                mp4 = next((corpus / "video_v5_0").glob(f"dia{cid}utt{utt['index']}_*.mp4"))
                with av.open(str(mp4)) as clip:
                    frames = [f.reformat(width=size, height=size, format="yuv420p").to_ndarray()
                              for f in clip.decode(video=0)]
                cache[key] = (np.round(np.clip(samples, -1, 1) * 32767).astype(np.int16), frames)
            pcm, frames = cache[key]
            seconds = len(pcm) / rate
            name = "Alice" if utt["role"] == "speaker" else "Bob"
            cues.append(f"{len(cues) + 1}\n{format_time(t)} --> {format_time(t + seconds)}\n{name}: {utt['utterance']}\n")
            for lo in range(0, len(pcm), 4096):
                block = pcm[lo:lo + 4096]
                frame = av.AudioFrame.from_ndarray(block[None], format="s16", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = rate, apts, Fraction(1, rate)
                apts += len(block)
                container.mux(audio.encode(frame))
            t += seconds
            while vpts < t * fps:  # the clip's frames spread over its span
                position = (vpts / fps - (t - seconds)) / seconds
                frame = av.VideoFrame.from_ndarray(frames[min(len(frames) - 1, int(position * len(frames)))],
                                                   format="yuv420p")
                frame.pts = vpts
                vpts += 1
                container.mux(video.encode(frame))
        container.mux(video.encode())
        container.mux(audio.encode())
    srt.write_text("\n".join(cues), encoding="utf-8")
    return path, srt, len(cues)


def child(bundle: Path, media: Path, srt: Path) -> None:
    """One measurement in this fresh process: the model loaded, then one timed predict_media."""
    import torch

    from emotrain.inference.predict import Predictor

    torch.set_num_threads(1)
    predictor = Predictor.load(bundle)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = predictor.predict_media(media, transcript=srt)
    wall = time.perf_counter() - start
    print(json.dumps({"wall": wall, "duration": result.info.duration, "turns": len(result.turns),
                      "utterances": len(result.utterances), "timings": result.timings,
                      "rss_loaded_kib": rss_loaded,
                      "rss_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def measure(bundle: Path, media: Path, srt: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", str(bundle), str(media), str(srt)],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.exit(f"measurement failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(*map(Path, sys.argv[2:]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="a bundle (default: build the tests' stand-in system)")
    parser.add_argument("--minutes", type=float, default=10.0, help="the file the real-time factor is measured on")
    parser.add_argument("--long-minutes", type=float, default=60.0, help="the long file for the memory comparison")
    parser.add_argument("--size", type=int, default=224, help="video width and height in px")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--keep", type=Path, help="write the files here and keep them (default: a temp folder)")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "tests"))
    from corpus import make_corpus, make_shards
    from emotrain.data.splits import SplitRecipe

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        corpus = make_corpus(work / "corpus", conversations=20, seed=5)
        bundle = args.bundle
        if bundle is None:
            from predict_system import make_system

            shards = work / "shards" / "p"
            make_shards(corpus, shards, recipe=SplitRecipe(0.3, 0.3, seed=0), shard_mb=100.0, max_per_shard=3)
            bundle = make_system(work / "sys", shards)["bundle"]
        results = {}
        for minutes in (args.minutes, args.long_minutes):
            began = time.perf_counter()
            media, srt, cues = write_long_video(corpus, work / f"talk-{minutes:g}min", minutes, args.size, args.fps)
            made = time.perf_counter() - began
            print(f"made {media.name}: {minutes:g} min, {cues} cues, {media.stat().st_size / 2**20:.1f} MiB "
                  f"({args.size}x{args.size} px, {args.fps} fps, H.264 crf 23 + 16 kHz PCM) in {made:.0f} s", flush=True)
            results[minutes] = measure(bundle, media, srt)
        first = results[args.minutes]
        t = first["timings"]
        rtf = first["duration"] / first["wall"]
        print(f"{args.minutes:g}-minute video, {first['turns']} turns of {first['utterances']} utterances, one process, "
              f"one thread: {first['wall']:.1f} s wall, real-time factor {rtf:.1f}x "
              f"(media seconds per wall second)")
        other = first["wall"] - t["decode"] - t["preprocess"] - t["model"]
        for name in ("decode", "preprocess", "model"):
            print(f"  {name:<10} {t[name]:7.1f} s  {100 * t[name] / first['wall']:4.0f}%")
        print(f"  {'other':<10} {other:7.1f} s  {100 * other / first['wall']:4.0f}%  (probe, transcript, frame time "
              "stamps pass, fusion)")
        for minutes, r in results.items():
            grown = (r["rss_peak_kib"] - r["rss_loaded_kib"]) / 1024
            print(f"peak RSS, {minutes:g}-minute file: {r['rss_peak_kib'] / 1024:.0f} MiB, {grown:.0f} MiB above the "
                  f"model loaded ({r['rss_loaded_kib'] / 1024:.0f} MiB); {r['turns']} turns, "
                  f"real-time factor {r['duration'] / r['wall']:.1f}x")


if __name__ == "__main__":
    main()
