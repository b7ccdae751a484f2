"""Does a trained model attend to the turn's own utterance more than to its history? (``predict --explain``)

On the synthetic corpus a turn's own (speaker) utterance carries its class cues and the history carries
other turns' cues (decoys) or none. This script trains the demo's tiny model A (``configs/demo/audio_text.yaml``:
audio + text, Bi-LSTM and self-attention over the utterances) for ``--steps`` optimizer steps on the train
split in-process (plain AdamW, fp32, no DeepSpeed), bundles it and the same model untrained, and runs both
through ``Predictor.predict_media(explain=True)`` on the test split's conversations, each joined into one
video with a subtitle file (``tests/media_corpus.py``). Per turn with history it takes the attention weight
of the turn's own utterance and the mean weight of its history utterances, and prints the means and the
margin (own - history) for both models, with the test accuracy of each (how much the model learned).

    python benchmarks/attention_focus.py --steps 150
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def bundle_of(model, cfg, root: Path) -> Path:  # noqa: ANN001
    """An export-style run folder of ``model`` (config + weights) bundled alone."""
    from emotrain.cli import main as cli
    from emotrain.evaluation.export import WEIGHTS, save_weights
    from emotrain.training.rundir import RunDir

    run = RunDir(root / "run")
    run.write_config(cfg)
    save_weights(model.state_dict(), run.root / WEIGHTS, {})
    assert cli(["bundle", "--audio", str(run.root), "--out", str(root / "bundle")]) == 0
    return root / "bundle"


def focus(bundle: Path, corpus: Path, records: list[dict], work: Path, labels: dict[str, str]) -> dict[str, float]:
    from media_corpus import join_conversation

    from emotrain.inference.predict import Predictor

    predictor = Predictor.load(bundle)
    own, history, correct, total = [], [], 0, 0
    for record in records:
        joined = join_conversation(corpus, record, work / record["conversation_id"])
        result = predictor.predict_media(joined.path, transcript=joined.transcript, speaker="Alice", explain=True)
        by_last = {t["dialogue_history"][-1]["index"]: t["turn_id"] for t in record["turns"]}
        for turn in result.turns:
            weights = [w["weight"] for w in turn.explanation["attention"]["audio"]]
            if len(weights) > 1:
                own.append(weights[-1])
                history.append(float(np.mean(weights[:-1])))
            gold = labels.get(f"{record['conversation_id']}_{by_last[turn.utterance.index]}")
            if gold is not None:
                correct += int(gold == turn.label)
                total += 1
    return {"own": float(np.mean(own)), "history": float(np.mean(history)), "turns": len(own),
            "margin": float(np.mean(np.array(own) - np.array(history))), "accuracy": correct / max(total, 1)}


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

    from emotrain.data.manifest import Manifest
    from emotrain.data.pack import label_turns
    from emotrain.data.avamerg import read_conversations
    from emotrain.data.schema import meta_vocab_sizes
    from emotrain.data.splits import SplitRecipe
    from emotrain.data.stream import Modalities, as_tensors, build_loader
    from emotrain.models import build_model
    from emotrain.models.inputs import model_inputs
    from emotrain.training.run_config import load_run_config

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        corpus = make_corpus(work / "corpus", conversations=args.conversations, seed=5)
        shards = work / "shards" / "p"
        manifests = make_shards(corpus, shards, recipe=SplitRecipe(0.2, 0.3, seed=0), shard_mb=100.0, max_per_shard=4)
        cfg = load_run_config(REPO / "configs" / "demo" / "audio_text.yaml",
                              [f"data.shards={shards}", "train.bf16=false", "data.num_workers=0"])
        manifest = Manifest.load(shards, "train")
        torch.manual_seed(0)
        model = build_model(cfg.model, len(manifest.classes), meta_vocab_sizes(manifest.vocab), load_weights=False)
        untrained = bundle_of(model.eval(), cfg, work / "untrained")
        modalities = Modalities(audio=True, video=False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
        step, began = 0, time.perf_counter()
        while step < args.steps:
            loader, _ = build_loader(cfg.data, "train", modalities, 16, train=True)
            for batch in loader:
                model.train()
                batch = as_tensors(batch)
                loss = torch.nn.functional.cross_entropy(model(model_inputs(batch, torch.device("cpu"))), batch["labels"])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                if step >= args.steps:
                    break
        print(f"trained {args.steps} steps of 16 turns in {time.perf_counter() - began:.0f} s, last loss {loss.item():.4f}")
        trained = bundle_of(model.eval(), cfg, work / "trained")

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
        print(f"attention over the turn's utterances, {len(test)} conversations "
              f"(the test split):")
        for name, bundle in (("untrained", untrained), ("trained", trained)):
            f = focus(bundle, corpus, test, work / f"joined-{name}", labels)
            print(f"  {name:<9}: own utterance {f['own']:.4f}, history (mean per utterance) {f['history']:.4f}, "
                  f"margin {f['margin']:+.4f} over {f['turns']} turns; accuracy {f['accuracy']:.2f}")


if __name__ == "__main__":
    main()
