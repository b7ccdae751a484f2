"""Prepared video (`pack --prepare-video`): the same turns as mp4 shards, the frames the mp4 has, picked
uniformly in evaluation and jittered (seeded) in training, decoded in the workers or on the device."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

from corpus import ALL_IN_TRAIN, make_shards

from emotrain.data.media import VideoConfig, frame_indices, resize_frames
from emotrain.data.prepared import PreparedVideo, decode_on_device, split_frames
from emotrain.data.stream import Modalities, build_loader
from emotrain.data.synthetic import SynthSpec, VIDEO_DIR, generate_corpus
from emotrain.errors import UserError
from emotrain.models.inputs import model_inputs
from helpers import BIN, REPO, child_env, data_config

VIDEO = Modalities(audio=False, video=True)
PREPARED = PreparedVideo(frames=8, size=32)
# JPEG q90 4:2:0 against the same frames decoded from the mp4 and scaled the same way, in 0-255
# levels: the mean absolute difference over a clip, and the worst single frame's.
MEAN_TOLERANCE, FRAME_TOLERANCE = 3.0, 5.0


@pytest.fixture(scope="module")
def corpus64(tmp_path_factory) -> Path:
    """Clips larger than the prepared size (64 px, 8 fps, 1-2 s): packing scales them down."""
    root = tmp_path_factory.mktemp("corpus64")
    generate_corpus(root, 8, 3, SynthSpec(video_size=64, fps=8, min_seconds=1.0, max_seconds=2.0), progress=False)
    return root


@pytest.fixture(scope="module")
def both(corpus64, tmp_path_factory) -> tuple[Path, Path]:
    """The same corpus packed twice: mp4 as given, and prepared."""
    raw = tmp_path_factory.mktemp("raw") / "raw"
    prepared = tmp_path_factory.mktemp("prepared") / "prepared"
    make_shards(corpus64, raw, recipe=ALL_IN_TRAIN, shard_mb=100.0, max_per_shard=3)
    manifests = make_shards(corpus64, prepared, recipe=ALL_IN_TRAIN, shard_mb=100.0, max_per_shard=3, video=PREPARED)
    assert manifests["train"].video == PREPARED
    return raw, prepared


def members(shards: Path) -> dict[str, bytes]:
    out = {}
    for tar_path in sorted((shards / "train").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            out.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    return out


def eval_batches(shards: Path, workers: int = 0, **video) -> list[dict]:
    cfg = data_config(shards, num_workers=workers, video=VideoConfig(num_frames=4, image_size=32, **video))
    loader, _ = build_loader(cfg, "train", VIDEO, 4, train=False)
    return list(loader)


def test_prepared_and_raw_shards_give_the_same_turns_and_labels(both):
    raw, prepared = both
    raw_batches, prepared_batches = eval_batches(raw), eval_batches(prepared)
    keys = [k for b in raw_batches for k in b["keys"]]
    assert keys and keys == [k for b in prepared_batches for k in b["keys"]]
    assert torch.equal(torch.cat([b["labels"] for b in raw_batches]), torch.cat([b["labels"] for b in prepared_batches]))
    stored = members(prepared)
    assert not any(name.endswith(".mp4") for name in stored)  # the mp4s are not kept
    for raw_batch, batch in zip(raw_batches, prepared_batches):
        assert batch["video"].shape == raw_batch["video"].shape == (len(batch["keys"]), 4, 3, 32, 32)
        assert batch["video"].dtype == torch.uint8 and batch["video_present"].all()


def test_prepared_frames_match_the_mp4_at_the_same_timestamps(both, corpus64):
    import decord

    _, prepared = both
    stored = members(prepared)
    errors = []
    for name in sorted(n for n in stored if n.endswith(".frames.json")):
        conv, utt = name.split(".")[:2]
        index = json.loads(stored[name])
        frames = split_frames(stored[f"{conv}.{utt}.frames.mjpeg"], stored[name], PREPARED)
        mp4 = next((corpus64 / VIDEO_DIR).glob(f"dia{conv}{utt}_*.mp4"))
        reader = decord.VideoReader(str(mp4), num_threads=1)
        assert index["source_frame_count"] == len(reader)
        assert index["source_frames"] == frame_indices(len(reader), PREPARED.frames, False, None).tolist()
        want = torch.from_numpy(reader.get_batch(index["source_frames"]).asnumpy()).permute(0, 3, 1, 2)
        want = resize_frames(want.float(), PREPARED.size)
        sizes = torch.tensor([[len(f) for f in frames]])
        got = decode_on_device(torch.frombuffer(bytearray(b"".join(frames)), dtype=torch.uint8), sizes, 32,
                               torch.device("cpu"))[0]
        errors.append((got.float() - want).abs().mean(dim=(1, 2, 3)))
    errors = torch.cat(errors)
    assert len(errors) >= 20
    print(f"prepared vs mp4: mean |diff| {errors.mean():.2f}, worst frame {errors.max():.2f} levels of 255")
    assert errors.mean() <= MEAN_TOLERANCE and errors.max() <= FRAME_TOLERANCE


def test_eval_picks_the_stored_frames_uniformly(both):
    _, prepared = both
    stored = members(prepared)
    batch = eval_batches(prepared)[0]
    conv, turn = batch["keys"][0].rsplit("_", 1)
    record = json.loads(stored[f"{conv}.json"])
    last = next(t["last_utterance"] for t in record["turns"] if str(t["turn_id"]) == turn)
    frames = split_frames(stored[f"{conv}.utt{last}.frames.mjpeg"], stored[f"{conv}.utt{last}.frames.json"], PREPARED)
    picked = [frames[i] for i in frame_indices(PREPARED.frames, 4, False, None)]  # frames 1, 3, 5, 7 of 8
    sizes = torch.tensor([[len(f) for f in picked]])
    want = decode_on_device(torch.frombuffer(bytearray(b"".join(picked)), dtype=torch.uint8), sizes, 32,
                            torch.device("cpu"))[0]
    assert torch.equal(batch["video"][0], want)


def train_frames(shards: Path, seed: int, batches: int) -> list[tuple[str, torch.Tensor]]:
    cfg = data_config(shards, seed=seed, video=VideoConfig(num_frames=4, image_size=32, jitter=True))
    loader, _ = build_loader(cfg, "train", VIDEO, 4, train=True)
    out = []
    for i, batch in enumerate(loader):
        out += list(zip(batch["keys"], batch["video"].clone()))
        if i + 1 == batches:
            return out
    return out


def test_train_jitter_differs_between_epochs_and_is_seeded(both):
    _, prepared = both
    batches = 12  # about three epochs of the 8 conversations' turns
    first, again, other = (train_frames(prepared, seed, batches) for seed in (0, 0, 1))
    assert all(k1 == k2 and torch.equal(f1, f2) for (k1, f1), (k2, f2) in zip(first, again))
    assert any(not torch.equal(f1, f2) for (_, f1), (_, f2) in zip(first, other))
    by_key: dict[str, list[torch.Tensor]] = {}
    for key, frames in first:
        by_key.setdefault(key, []).append(frames)
    repeated = [seen for seen in by_key.values() if len(seen) >= 2]
    assert len(repeated) >= 5
    changed = sum(not torch.equal(seen[0], seen[1]) for seen in repeated)
    assert changed >= len(repeated) // 2  # 4 of 8 stored frames: the same draw twice is (1/2)^4


@pytest.mark.parametrize("video, words", [
    (VideoConfig(num_frames=16, image_size=32), "16 frames of 32x32"),
    (VideoConfig(num_frames=4, image_size=64), "4 frames of 64x64"),
])
def test_a_model_that_does_not_fit_the_prepared_shards_is_one_line_naming_both(both, video, words):
    _, prepared = both
    with pytest.raises(UserError) as err:
        build_loader(data_config(prepared, video=video), "train", VIDEO, 4, train=False)
    message = str(err.value)
    assert "8 JPEG frames of 32x32" in message and words in message and "\n" not in message


def test_device_decode_gives_the_frames_worker_decode_gives(both):
    _, prepared = both
    # One loader worker each: the decoded frames (a channels-first view of shared memory) and the
    # JPEG bytes cross a process boundary as they do in training.
    in_worker = eval_batches(prepared, workers=1)
    undecoded = eval_batches(prepared, workers=1, jpeg_decode="device")
    for worker_batch, batch in zip(in_worker, undecoded, strict=True):
        assert "video" not in batch and batch["video_jpeg"].dtype == torch.uint8
        assert batch["video_jpeg"].numel() < worker_batch["video"].numel() / 2  # compressed bytes only
        inputs = model_inputs(batch, torch.device("cpu"))
        assert "video_jpeg" not in inputs and torch.equal(inputs["video"], worker_batch["video"])


def test_a_damaged_prepared_clip_is_skipped_and_counted(both, tmp_path):
    _, prepared = both
    damaged = tmp_path / "damaged"
    (damaged / "train").mkdir(parents=True)
    manifest = json.loads((prepared / "train" / "manifest.json").read_text())
    victims = 0
    for shard in manifest["shards"]:
        with tarfile.open(prepared / "train" / shard["name"]) as src, \
                tarfile.open(damaged / "train" / shard["name"], "w") as dst:
            for member in src.getmembers():
                data = src.extractfile(member).read()
                if member.name.endswith(".frames.mjpeg") and victims < 2:
                    data, victims = data[: len(data) // 2], victims + 1  # truncated: sizes no longer add up
                member.size = len(data)
                dst.addfile(member, io.BytesIO(data))
    (damaged / "train" / "manifest.json").write_text(json.dumps(manifest))
    batches = eval_batches(damaged)
    assert sum(b["skipped"]["bad_clips"] for b in batches) >= 1
    assert sum(int((~b["video_present"]).sum()) for b in batches) >= 1
    assert [k for b in batches for k in b["keys"]] == [k for b in eval_batches(prepared) for k in b["keys"]]


def test_repacking_with_other_video_settings_rewrites_the_shards(corpus64, tmp_path):
    out = tmp_path / "p"
    make_shards(corpus64, out, recipe=ALL_IN_TRAIN, shard_mb=100.0, max_per_shard=4, video=PREPARED)
    other = PreparedVideo(frames=4, size=16)
    manifests = make_shards(corpus64, out, recipe=ALL_IN_TRAIN, shard_mb=100.0, max_per_shard=4, video=other)
    assert manifests["train"].video == other
    stored = members(out)
    index = json.loads(next(v for k, v in stored.items() if k.endswith(".frames.json")))
    assert len(index["sizes"]) == 4  # a kept shard would still hold 8 frames per clip


def test_pack_cli_rejects_bad_video_settings_in_one_line(corpus64, tmp_path):

    proc = subprocess.run([str(BIN / "emotrain"), "pack", "--avamerg", str(corpus64), "--out", str(tmp_path / "s"),
                           "--prepare-video", "--video-size", "7"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "size must be an even number" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG decoding needs a CUDA device")
def test_nvjpeg_on_cuda_matches_libjpeg_turbo_in_the_workers(both):
    _, prepared = both
    for batch in eval_batches(prepared, jpeg_decode="device"):
        on_gpu = model_inputs(batch, torch.device("cuda"))["video"]
        on_cpu = model_inputs(batch, torch.device("cpu"))["video"]
        assert on_gpu.device.type == "cuda" and on_gpu.shape == on_cpu.shape
        assert (on_gpu.cpu().float() - on_cpu.float()).abs().mean() <= 1.0  # IDCT rounding differs by a level


def test_training_on_prepared_shards_of_another_size_stops_in_one_line_before_any_work(corpus64, tmp_path):

    shards = tmp_path / "small"
    make_shards(corpus64, shards, recipe=ALL_IN_TRAIN, shard_mb=100.0, video=PreparedVideo(frames=8, size=16))
    run_dir = tmp_path / "run"
    proc = subprocess.run([str(BIN / "emotrain"), "train", "demo/video_text", "--run-dir", str(run_dir),
                           "--set", f"data.shards={shards}"], env=child_env(), cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert "8 JPEG frames of 16x16" in line and "4 frames of 32x32" in line
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "config.yaml").exists()


def test_a_bad_mp4_is_skipped_with_its_reason_when_preparing(corpus64, tmp_path):
    import shutil

    corpus = tmp_path / "corpus"
    shutil.copytree(corpus64, corpus)
    victim = sorted((corpus / VIDEO_DIR).glob("*.mp4"))[0]
    victim.write_bytes(victim.read_bytes()[:2000])  # truncated
    manifests = make_shards(corpus, tmp_path / "s", recipe=ALL_IN_TRAIN, shard_mb=100.0, workers=2, max_per_shard=2,
                            video=PREPARED)
    skipped = [s for s in manifests["train"].skipped if victim.name in s["id"]]
    assert len(skipped) == 1 and "mp4" in skipped[0]["reason"]
    assert manifests["train"].conversations == 8  # its conversation is kept, the clip recorded as missing


def test_device_decode_on_cuda_without_torchvision_is_one_line(both):
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here: the line is for a machine without it")
    batch = eval_batches(both[1], jpeg_decode="device")[0]
    with pytest.raises(UserError, match="needs torchvision"):
        decode_on_device(batch["video_jpeg"], batch["video_jpeg_sizes"], batch["video_jpeg_side"], torch.device("cuda"))


def _tarfile_members(file):
    """The shard reader's headers as ``tarfile`` reads them (what emotrain.data.tars._members replaced)."""
    with tarfile.open(fileobj=file, mode="r:") as tar:
        for info in tar:
            file.seek(info.offset_data)
            yield info.name, info.size, info.isreg()


def _wrapper_token_ids(tokenizer, texts, cap):
    """Token ids through the transformers wrapper (what emotrain.data.text.token_ids replaced)."""
    return tokenizer(texts, truncation=True, max_length=cap)["input_ids"]


@pytest.mark.parametrize("decode", ["worker", "device"])
def test_lean_tar_headers_and_token_ids_leave_every_sample_as_it_was(both, monkeypatch, decode):
    """Training batches (jittered frames, audio-free model B, context on) with the worker's lean paths and with
    the tarfile reader and the tokenizer wrapper they replaced: equal, field by field."""
    from emotrain.data import tars, text

    def batches() -> list[dict]:
        cfg = data_config(both[1], seed=3, shuffle_buffer=4,
                          video=VideoConfig(num_frames=4, image_size=32, jitter=True, jpeg_decode=decode))
        loader, _ = build_loader(cfg, "train", Modalities(audio=True, video=True), 4, train=True)
        out = []
        for batch in loader:
            out.append(batch)
            if len(out) == 6:
                return out
        return out

    lean = batches()
    monkeypatch.setattr(tars, "_members", _tarfile_members)
    monkeypatch.setattr(text, "token_ids", _wrapper_token_ids)
    reference = batches()
    assert len(lean) == len(reference) == 6
    for ours, theirs in zip(lean, reference):
        assert ours.keys() == theirs.keys()
        for key in ours:
            if isinstance(ours[key], torch.Tensor):
                assert torch.equal(ours[key], theirs[key]), key
            else:
                assert ours[key] == theirs[key], key


def test_reused_frame_buffers_never_change_a_batch_whether_kept_or_dropped(both):
    """Worker-decoded frames go into shared-memory slots the worker reuses once the batch's frames are gone from
    this process (emotrain.data.frame_slots). A consumer that keeps every batch and one that drops each at once
    see the frames a worker-less loader gives; the second really reuses slots."""
    def stream(workers: int, keep: bool, count: int = 24):
        cfg = data_config(both[1], num_workers=workers, seed=5,
                          video=VideoConfig(num_frames=4, image_size=32, jitter=True))
        loader, _ = build_loader(cfg, "train", VIDEO, 2, train=True)
        out = []
        for batch in loader:
            out.append((batch["keys"], batch["video"] if keep else batch["video"].clone()))
            del batch
            if len(out) == count:
                return out, loader
        return out, loader

    reference, _ = stream(0, keep=True)
    kept, _ = stream(1, keep=True)
    dropped, loader = stream(1, keep=False)
    for got in (kept, dropped):
        assert [k for k, _ in got] == [k for k, _ in reference]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, reference))
    assert loader.frame_slots is not None and loader.frame_slots.reused > 0
