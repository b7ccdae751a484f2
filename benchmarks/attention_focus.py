"""Does a trained model rest on the turn's own utterance more than on its history? (``predict --explain``)

On the synthetic corpus a turn's own (speaker) utterance carries its class cues and the history carries
other turns' cues (decoys) or none. This script trains the demo's tiny model A (``configs/demo/audio_text.yaml``:
audio + text, Bi-LSTM and self-attention over the utterances) for ``--steps`` optimizer steps on the train
split in-process (plain AdamW, fp32, no DeepSpeed), bundles it and the same model untrained, and runs both
through ``Predictor.predict_media(explain=True)`` on the test split's conversations, each joined into one
video with a subtitle file (``tests/media_corpus.py``). Per turn with history it takes, for both measures of
the explanation (the attention weight, and the occlusion influence: the drop in the model's probability of the
label when the utterance is masked), the turn's own utterance's value and the mean over its history
utterances, and prints the means, the margin (own - history) and the share of turns where the own utterance
wins, for both models, with the test accuracy of each (how much the model learned).

    python benchmarks/attention_focus.py --steps 150
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def focus(bundle: Path, corpus: Path, records: list[dict], work: Path, labels: dict[str, str]) -> dict[str, Any]:
    from media_corpus import join_conversation

    from emotrain.inference.predict import Predictor

    predictor = Predictor.load(bundle)
    measures = ("attention", "influence", "attention, speaker's", "influence, speaker's")
    own, history, correct, total = {m: [] for m in measures}, {m: [] for m in measures}, 0, 0
    for record in records:
        joined = join_conversation(corpus, record, work / record["conversation_id"])
        result = predictor.predict_media(joined.path, transcript=joined.transcript, speaker="Alice", explain=True)
        by_last = {t["dialogue_history"][-1]["index"]: t["turn_id"] for t in record["turns"]}
        roles = {u.index: u.role for u in result.utterances}
        for turn in result.turns:
            for measure, field in (("attention", "weight"), ("influence", "influence")):
                entries = turn.explanation[measure]["audio"]
                values = [w[field] for w in entries]
                if len(values) > 1:
                    own[measure].append(values[-1])
                    history[measure].append(float(np.mean(values[:-1])))
                # the speaker's own earlier utterances: they carry earlier turns' cues, mostly of the same class
                earlier = [w[field] for w in entries[:-1] if roles[w["utterance"]] == "speaker"]
                if earlier:
                    own[f"{measure}, speaker's"].append(values[-1])
                    history[f"{measure}, speaker's"].append(float(np.mean(earlier)))
            gold = labels.get(f"{record['conversation_id']}_{by_last[turn.utterance.index]}")
            if gold is not None:
                correct += int(gold == turn.label)
                total += 1
    out: dict[str, Any] = {"accuracy": correct / max(total, 1)}
    for measure in own:
        o, h = np.array(own[measure]), np.array(history[measure])
        out[measure] = {"own": float(o.mean()), "history": float(h.mean()), "turns": len(o),
                        "margin": float((o - h).mean()), "own_wins": float((o > h).mean())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--conversations", type=int, default=40)
    parser.add_argument("--keep", type=Path, help="work here and keep the corpus and both bundles")
    args = parser.parse_args()

    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from corpus import make_corpus, make_shards
    from tiny_trained import train_model_a

    from emotrain.data.avamerg import read_conversations
    from emotrain.data.manifest import Manifest
    from emotrain.data.pack import label_turns
    from emotrain.data.splits import SplitRecipe

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        corpus = make_corpus(work / "corpus", conversations=args.conversations, seed=5)
        shards = work / "shards" / "p"
        manifests = make_shards(corpus, shards, recipe=SplitRecipe(0.2, 0.3, seed=0), shard_mb=100.0, max_per_shard=4)
        manifest = Manifest.load(shards, "train")
        began = time.perf_counter()
        bundles = train_model_a(shards, work, args.steps, lr=args.lr)
        print(f"trained {args.steps} steps of 16 turns in {time.perf_counter() - began:.0f} s, "
              f"last loss {bundles['loss']:.4f}")
        untrained, trained = bundles["untrained"], bundles["trained"]

        test_ids = set(manifests["test"].conversation_ids)
        records = json.loads((corpus / "train.json").read_text(encoding="utf-8"))
        conversations, _ = read_conversations(corpus / "train.json")
        scheme = manifest.scheme
        labels = {}
        for conv in conversations:
            ids, _ = label_turns(conv, scheme)
            for turn, label in zip(conv.turns, ids):
                if label >= 0:
                    labels[f"{conv.conversation_id}_{turn.turn_id}"] = scheme.classes[label]
        test = [r for r in records if r["conversation_id"] in test_ids]
        print(f"the turn's own utterance vs its history (mean per history utterance), {len(test)} conversations "
              f"(the test split); margin = mean over turns of own - history, own wins = share of turns where own > history; "
              f"\"speaker's\": the history restricted to the speaker's earlier utterances (turns with one):")
        for name, bundle in (("untrained", untrained), ("trained", trained)):
            f = focus(bundle, corpus, test, work / f"joined-{name}", labels)
            print(f"  {name} (test accuracy {f['accuracy']:.2f}):")
            for measure in ("attention", "influence", "attention, speaker's", "influence, speaker's"):
                m = f[measure]
                print(f"    {measure:<20}: own {m['own']:+.4f}, history {m['history']:+.4f}, margin {m['margin']:+.4f}, "
                      f"own wins {m['own_wins']:.2f} of {m['turns']} turns")


if __name__ == "__main__":
    main()
