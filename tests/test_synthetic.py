"""The synthetic corpus: real AvaMERG layout, deterministic, and a class signal that is really there."""

from __future__ import annotations

import colorsys
import hashlib
import io
import json
import re
from collections import Counter
from pathlib import Path

import decord
import numpy as np
import pytest
import soundfile

from emotrain.cli import main as cli_main
from emotrain.data import synthetic as syn
from emotrain.data.synthetic import CUES, SynthSpec, generate_corpus, plan_conversation, write_vocab
from emotrain.errors import UserError
from emotrain.labels import load_scheme

EKMAN = load_scheme("ekman7")
ED32 = load_scheme("ed32")
SMALL = SynthSpec(video_size=32, min_seconds=1.0, max_seconds=1.5)
PITCHES = {c: cue.pitch_hz for c, cue in CUES.items()}
VOCAB = Path(__file__).resolve().parent.parent / "configs" / "tokenizers" / "tiny-wordpiece" / "vocab.txt"


def _media_digest(root: Path) -> dict[str, str]:
    return {
        f"{p.parent.name}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.glob("*_v5_0/*"))
    }


def _records(root: Path) -> list[dict]:
    return json.loads((root / "train.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "corpus"
    summary = generate_corpus(out, 6, seed=7, spec=SMALL, progress=False)
    return out, summary


def _current_stem(record: dict, turn: dict) -> str:
    return f"dia{record['conversation_id']}utt{2 * turn['turn_id']}_{record['speaker_profile']['ID']}"


# --- layout ------------------------------------------------------------------------------------


def test_layout_and_names_follow_avamerg(corpus):
    out, summary = corpus
    records = _records(out)
    ids = [r["conversation_id"] for r in records]
    assert len(set(ids)) == len(ids) == summary["conversations"] == 6
    assert all(re.fullmatch(r"\d{5}", cid) for cid in ids)
    expected = set()
    for r in records:
        for role in ("speaker", "listener"):
            profile = r[f"{role}_profile"]
            assert set(profile) == {"ID", "age", "gender", "timbre"} and isinstance(profile["ID"], int)
            assert profile["age"] in {"child", "young", "middle-aged", "elderly"}
            assert profile["gender"] in {"male", "female"} and profile["timbre"] in {"high", "mid", "low"}
        assert r["speaker_profile"]["ID"] != r["listener_profile"]["ID"]
        assert r["topic"] in syn.TOPIC_NOUNS
        assert 1 <= len(r["turns"]) <= 4
        for u in r["turns"][-1]["dialogue_history"]:
            avatar = r[f"{u['role']}_profile"]["ID"]
            expected.add(f"dia{r['conversation_id']}utt{u['index']}_{avatar}")
    assert {p.stem for p in (out / "audio_v5_0").iterdir()} == expected
    assert {p.stem for p in (out / "video_v5_0").iterdir()} == expected
    assert {p.suffix for p in (out / "audio_v5_0").iterdir()} == {".wav"}
    assert {p.suffix for p in (out / "video_v5_0").iterdir()} == {".mp4"}
    assert summary["clips"] == len(expected)
    assert summary["turns"] == sum(len(r["turns"]) for r in records)

    seconds = 0.0
    for stem in expected:
        info = soundfile.info(str(out / "audio_v5_0" / f"{stem}.wav"))
        assert info.channels == 1 and info.samplerate in {16_000, 22_050, 44_100}
        assert 1.0 - 1e-3 <= info.duration <= 1.5 + 1e-3
        seconds += info.duration
        video = decord.VideoReader(io.BytesIO((out / "video_v5_0" / f"{stem}.mp4").read_bytes()))
        assert video[0].shape == (32, 32, 3)
        assert video.get_avg_fps() == pytest.approx(8.0)
        assert len(video) == round(info.duration * 8)
    assert seconds == pytest.approx(summary["seconds"], abs=0.05)


def test_history_is_cumulative_and_consistent(corpus):
    records = _records(corpus[0])
    for r in records:
        turns = r["turns"]
        assert [t["turn_id"] for t in turns] == list(range(len(turns)))
        for k, turn in enumerate(turns):
            history = turn["dialogue_history"]
            assert [u["index"] for u in history] == list(range(2 * k + 1))
            assert [u["role"] for u in history] == ["speaker", "listener"] * k + ["speaker"]
            assert turn["context"] == turns[0]["context"]
            chain = turn["chain_of_empathy"]
            assert set(chain) == {"speaker_emotion", "event_scenario", "emotion_cause", "goal_to_response"}
            assert chain["event_scenario"] in syn.EVENT_SCENARIOS
            assert all(isinstance(v, str) and v for v in chain.values())
            if k:
                assert history[: 2 * k - 1] == turns[k - 1]["dialogue_history"]
                assert history[2 * k - 1]["utterance"] == turns[k - 1]["response"]


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_differs(corpus, tmp_path):
    out, _ = corpus
    again = tmp_path / "again"
    generate_corpus(again, 6, seed=7, spec=SMALL, progress=False)
    assert (again / "train.json").read_bytes() == (out / "train.json").read_bytes()
    assert _media_digest(again) == _media_digest(out)
    other = tmp_path / "other"
    generate_corpus(other, 6, seed=8, spec=SMALL, progress=False, media=False)
    assert (other / "train.json").read_bytes() != (out / "train.json").read_bytes()


def test_json_does_not_depend_on_writing_media(corpus, tmp_path):
    generate_corpus(tmp_path / "json_only", 6, seed=7, spec=SMALL, progress=False, media=False)
    assert (tmp_path / "json_only" / "train.json").read_bytes() == (corpus[0] / "train.json").read_bytes()
    assert not any((tmp_path / "json_only" / "audio_v5_0").iterdir())


@pytest.mark.slow
def test_workers_do_not_change_the_output(corpus, tmp_path):
    generate_corpus(tmp_path / "par", 6, seed=7, spec=SMALL, workers=2, progress=False)
    assert (tmp_path / "par" / "train.json").read_bytes() == (corpus[0] / "train.json").read_bytes()
    assert _media_digest(tmp_path / "par") == _media_digest(corpus[0])


# --- the class signal --------------------------------------------------------------------------


def _pitch_class(path: Path) -> str | None:
    """Class of the dominant frequency, None when it is a neutral (below-class) voice."""
    wave, rate = soundfile.read(str(path))
    power = np.abs(np.fft.rfft(wave))
    freqs = np.fft.rfftfreq(len(wave), 1.0 / rate)
    f0 = freqs[np.argmax(power * (freqs > 60))]
    if f0 < 145:
        return None
    return min(PITCHES, key=lambda c: abs(np.log(PITCHES[c] / f0)))


def _colour_class(path: Path) -> str | None:
    """Class of the hue of the clip's mean colour, None when the clip is grey."""
    video = decord.VideoReader(io.BytesIO(path.read_bytes()))
    mean = video.get_batch(list(range(len(video)))).asnumpy().reshape(-1, 3).mean(0) / 255.0
    hue, saturation, _ = colorsys.rgb_to_hsv(*mean)
    if saturation < 0.1:
        return None
    return min(CUES, key=lambda c: abs((CUES[c].hue_deg - hue * 360 + 180) % 360 - 180))


@pytest.fixture(scope="module")
def signal_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("signal") / "corpus"
    spec = SynthSpec(video_size=32, min_seconds=1.0, max_seconds=1.0)
    generate_corpus(out, 40, seed=3, spec=spec, progress=False)
    return out, spec


def test_every_clip_renders_its_planned_cue(signal_corpus):
    out, spec = signal_corpus
    checked = Counter()
    for index in range(40):
        _, clips = plan_conversation(index, 3, spec)
        for clip in clips:
            checked["audio"] += _pitch_class(out / "audio_v5_0" / f"{clip.stem}.wav") == clip.audio_class
            checked["video"] += _colour_class(out / "video_v5_0" / f"{clip.stem}.mp4") == clip.video_class
            checked["clips"] += 1
            checked["cued"] += clip.audio_class is not None
    assert checked["cued"] > 50  # the corpus has class cues at all, not only neutral clips
    assert checked["audio"] >= 0.97 * checked["clips"]
    assert checked["video"] >= 0.97 * checked["clips"]


@pytest.mark.parametrize("detector", [_pitch_class, _colour_class], ids=["pitch", "colour"])
def test_media_predict_the_label_well_above_chance(signal_corpus, detector):
    out, _ = signal_corpus
    labels, predicted = [], []
    folder = "audio_v5_0" if detector is _pitch_class else "video_v5_0"
    suffix = ".wav" if detector is _pitch_class else ".mp4"
    for record in _records(out):
        for turn in record["turns"]:
            label = EKMAN.index(turn["chain_of_empathy"]["speaker_emotion"])
            if label is not None:
                labels.append(EKMAN.classes[label])
                predicted.append(detector(out / folder / f"{_current_stem(record, turn)}{suffix}"))
    accuracy = np.mean([p == y for p, y in zip(predicted, labels)])
    # Agreement a detector with the same output frequencies would reach by chance.
    n = len(labels)
    chance = sum(predicted.count(c) * labels.count(c) for c in EKMAN.classes) / n**2
    assert n > 80
    assert accuracy >= 0.5 and accuracy >= 2 * chance


def test_video_blob_moves_in_the_class_direction():
    spec = SynthSpec(video_size=64, video_noise=0.0, direction_jitter=0.0, hue_jitter=0.0)
    rng = np.random.default_rng(0)
    for cls, cue in CUES.items():
        clip = syn.ClipPlan("x", 1, "mid", 0.3, 1.0, 16_000, None, cls)
        frames = syn.render_video(clip, spec, rng).astype(float)
        moved = []
        for a, b in zip(frames[:-1], frames[1:]):
            # Circular centroids of the blob (pixels far from the background colour), torus-aware.
            centres = []
            for frame in (a, b):
                mask = np.abs(frame - np.median(frame.reshape(-1, 3), axis=0)).sum(-1) > 40
                ys, xs = np.nonzero(mask)
                centres.append([np.angle(np.exp(2j * np.pi * v / 64).mean()) * 64 / (2 * np.pi) for v in (xs, ys)])
            dx, dy = ((np.array(centres[1]) - centres[0] + 32) % 64) - 32
            moved.append(np.degrees(np.arctan2(-dy, dx)) % 360)
        error = abs((np.median(moved) - cue.direction_deg + 180) % 360 - 180)
        assert error < 10, (cls, np.median(moved))


def test_audio_pulses_at_the_class_rate():
    spec = SynthSpec(audio_noise=0.0, pitch_jitter=0.0)
    rng = np.random.default_rng(0)
    for cls, cue in CUES.items():
        clip = syn.ClipPlan("x", 1, "mid", 0.3, 4.0, 16_000, cls, None)
        wave = syn.render_audio(clip, spec, rng)
        envelope = np.abs(wave).reshape(-1, 160).mean(1)  # 100 Hz envelope
        power = np.abs(np.fft.rfft(envelope - envelope.mean()))
        freqs = np.fft.rfftfreq(len(envelope), 0.01)
        assert freqs[np.argmax(power)] == pytest.approx(cue.rate_hz, abs=0.3), cls


def _cue_class(text: str) -> str | None:
    words = set(re.findall(r"\w+", text.lower()))
    found = {c for c, cue in CUES.items() if words & set(cue.words)}
    assert len(found) <= 1
    return found.pop() if found else None


def test_shares_of_informative_decoy_and_neutral_follow_the_spec():
    spec = SynthSpec(audio_informative=0.7, video_informative=0.5, text_informative=0.3, decoy_share=0.4)
    classes = EKMAN.classes
    hits, neutral, turns = Counter(), Counter(), 0
    both = 0
    for index in range(1500):
        record, clips = plan_conversation(index, 11, spec)
        by_stem = {c.stem: c for c in clips}
        for turn in record["turns"]:
            label = EKMAN.index(turn["chain_of_empathy"]["speaker_emotion"])
            if label is None:
                continue
            latent = classes[label]
            clip = by_stem[_current_stem(record, turn)]
            shown = {"audio": clip.audio_class, "video": clip.video_class,
                     "text": _cue_class(turn["dialogue_history"][-1]["utterance"])}
            turns += 1
            for modality, cls in shown.items():
                hits[modality] += cls == latent
                neutral[modality] += cls is None
            both += shown["audio"] == latent and shown["video"] == latent
    for modality, share in (("audio", 0.7), ("video", 0.5), ("text", 0.3)):
        assert hits[modality] / turns == pytest.approx(share + (1 - share) * 0.4 / 7, abs=0.03), modality
        assert neutral[modality] / turns == pytest.approx((1 - share) * 0.6, abs=0.03), modality
    # Drawn independently per modality, so audio and video fail on different turns.
    assert both / turns == pytest.approx(hits["audio"] / turns * hits["video"] / turns, abs=0.03)


def test_text_outside_the_speaker_utterances_carries_no_class(tmp_path):
    generate_corpus(tmp_path / "c", 300, seed=5, progress=False, media=False)
    label_words = {w.lower() for w in syn._labels().all_words} | set(EKMAN.classes)
    for record in _records(tmp_path / "c"):
        for turn in record["turns"]:
            chain = turn["chain_of_empathy"]
            neutral_texts = [turn["context"], turn["response"], chain["emotion_cause"], chain["goal_to_response"]]
            neutral_texts += [u["utterance"] for u in turn["dialogue_history"] if u["role"] == "listener"]
            for text in neutral_texts:
                assert _cue_class(text) is None
                assert not set(re.findall(r"[\w-]+", text.lower())) & label_words, text


# --- labels ------------------------------------------------------------------------------------


def test_label_distribution_follows_avamerg(tmp_path):
    generate_corpus(tmp_path / "c", 3000, seed=1, progress=False, media=False)
    records = _records(tmp_path / "c")
    words = [t["chain_of_empathy"]["speaker_emotion"] for r in records for t in r["turns"]]
    later = [t["chain_of_empathy"]["speaker_emotion"] for r in records for t in r["turns"][1:]]
    mapped = [EKMAN.index(w) for w in words if EKMAN.index(w) is not None]
    support = syn.AVAMERG_SUPPORT
    for i, cls in enumerate(EKMAN.classes):
        target = support[cls] / sum(support.values())
        assert mapped.count(i) / len(mapped) == pytest.approx(target, abs=0.025), cls
    assert set(ED32.classes) <= set(words)  # all 32 EmpatheticDialogues words are used
    free = [w for w in later if w not in ED32.classes]
    assert len(free) / len(later) == pytest.approx(0.03, abs=0.012)
    unlabelled = {w for w in words if EKMAN.index(w) is None}
    assert unlabelled and unlabelled <= set(syn.UNMAPPED_WORDS)
    assert {w for w in free if EKMAN.index(w) is not None}  # mapped free-form words occur too
    assert all(w in ED32.classes for r in records for w in [r["turns"][0]["chain_of_empathy"]["speaker_emotion"]])
    changed = sum(
        a["chain_of_empathy"]["speaker_emotion"] != b["chain_of_empathy"]["speaker_emotion"]
        for r in records for a, b in zip(r["turns"], r["turns"][1:])
    )
    assert 0 < changed < 0.25 * len(later)  # usually one emotion per conversation, occasionally a change


# --- vocabulary --------------------------------------------------------------------------------


def test_committed_vocab_is_current(tmp_path):
    write_vocab(tmp_path / "vocab.txt")
    assert VOCAB.read_text(encoding="utf-8") == (tmp_path / "vocab.txt").read_text(encoding="utf-8")
    tokens = VOCAB.read_text(encoding="utf-8").splitlines()
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(tokens) == len(set(tokens))


def test_tokenizer_reads_every_generated_text_without_unknowns(tmp_path):
    from transformers import BertTokenizerFast

    # transformers 5 takes the file as `vocab=` (a `vocab_file=` keyword is silently ignored).
    tokenizer = BertTokenizerFast(vocab=str(VOCAB))
    assert tokenizer.unk_token_id == 1 and tokenizer.pad_token_id == 0
    generate_corpus(tmp_path / "c", 200, seed=2, progress=False, media=False)
    texts = set()
    for record in _records(tmp_path / "c"):
        texts.add(record["topic"])
        for turn in record["turns"]:
            texts.update([turn["context"], turn["response"], *turn["chain_of_empathy"].values()])
            texts.update(u["utterance"] for u in turn["dialogue_history"])
    whole_words = set(VOCAB.read_text(encoding="utf-8").splitlines())
    for text in texts:
        pieces = tokenizer.tokenize(text)
        assert "[UNK]" not in pieces and all(p in whole_words and not p.startswith("##") for p in pieces), text
    assert "[UNK]" not in tokenizer.tokenize("An unseen Zebra-crossing, 42!")


# --- arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"conversations": 0}, "at least 1"),
        ({"spec": SynthSpec(video_size=1100)}, "video_size"),
        ({"spec": SynthSpec(keyframe_interval=0)}, "keyframe_interval"),
        ({"spec": SynthSpec(video_size=33)}, "video_size"),
        ({"spec": SynthSpec(audio_informative=1.5)}, "audio_informative"),
        ({"spec": SynthSpec(class_weights={"sad": 1.0})}, "class_weights"),
    ],
)
def test_bad_arguments_are_user_errors(tmp_path, kwargs, message):
    args = {"out_dir": tmp_path / "c", "conversations": 2, "seed": 0, "progress": False, "media": False, **kwargs}
    with pytest.raises(UserError, match=message):
        generate_corpus(**args)


def test_existing_corpus_needs_overwrite(tmp_path):
    generate_corpus(tmp_path, 2, seed=0, progress=False, media=False)
    with pytest.raises(UserError, match="already holds a corpus"):
        generate_corpus(tmp_path, 2, seed=1, progress=False, media=False)
    (tmp_path / "audio_v5_0" / "stale.wav").write_bytes(b"x")
    generate_corpus(tmp_path, 2, seed=1, progress=False, media=False, overwrite=True)
    assert not (tmp_path / "audio_v5_0" / "stale.wav").exists()
    with pytest.raises(UserError, match="is a file"):
        generate_corpus(tmp_path / "train.json", 2, seed=0, progress=False, media=False)


def test_cli_prints_a_summary_and_reports_bad_input(tmp_path, capsys):
    out = tmp_path / "c"
    assert cli_main(["synth", "--out", str(out), "--conversations", "1", "--video-size", "16", "--no-progress"]) == 0
    line = capsys.readouterr().out.strip()
    summary = r"synth: 1 conversations, \d turns \(\d unlabelled under ekman7\), \d+ clips, [\d.]+ s of media -> "
    assert re.fullmatch(summary + re.escape(str(out)), line)
    assert cli_main(["synth", "--out", str(out), "--conversations", "1", "--no-progress"]) == 2
    assert "already holds a corpus" in capsys.readouterr().err
    assert cli_main(["synth", "--out", str(tmp_path / "d"), "--conversations", "1", "--fps", "0"]) == 2


def test_the_avamerg_reader_takes_the_corpus_whole(corpus):
    from emotrain.data.avamerg import MediaDirs, read_conversations

    out, summary = corpus
    conversations, skipped = read_conversations(out / "train.json")
    assert skipped == [] and len(conversations) == summary["conversations"]
    media = MediaDirs.locate(out)
    for conversation in conversations:
        for utterance in conversation.utterances:
            stem = conversation.clip_stem(utterance)
            assert media.wav(stem).is_file() and media.mp4(stem).is_file()


def test_keyframe_interval_sets_the_gop_and_long_clips_render_at_large_sizes(tmp_path):
    import decord

    from emotrain.data.synthetic import write_mp4

    frames = np.random.default_rng(0).integers(0, 255, (30, 32, 32, 3), dtype=np.uint8)
    keyframes = {}
    for interval in (4, 250):
        path = tmp_path / f"k{interval}.mp4"
        write_mp4(path, frames, 25, interval)
        keyframes[interval] = len(decord.VideoReader(str(path)).get_key_indices())
    assert keyframes[250] == 1 and keyframes[4] >= 7
    spec = SynthSpec(video_size=512, fps=25, min_seconds=5.7, max_seconds=5.7)
    generate_corpus(tmp_path / "big", 1, 0, spec, progress=False)
    clip = next((tmp_path / "big" / "video_v5_0").glob("*.mp4"))
    reader = decord.VideoReader(str(clip))
    assert len(reader) == round(5.7 * 25) and reader[0].shape == (512, 512, 3)
