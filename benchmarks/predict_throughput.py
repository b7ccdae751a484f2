"""Prediction throughput: turns/s of ``predict`` from a raw AvaMERG folder and from packed shards of the same
corpus, and the latency of one conversation through the Python API.

On one synthetic corpus (the default ``SynthSpec``, or ``--corpus``), packed into a temp folder with every
conversation in one split, a bundle (``--bundle``, or by default the stand-in system of the tests: the demo's
tiny models with seeded weights, evaluated and fused for real, see ``tests/predict_system.py``) predicts:

(a) the raw folder, read directly (``predict_folder``: the reader, the pack's clip encoding, the loader's
    expansion), on one process;
(b) the shards of the same conversations (``predict_shards``: the evaluation loader), on one process with
    ``--workers`` loader workers per model (0: in the process, as (a));
(c) one conversation at a time through ``Predictor.predict_conversation``: median and 90th percentile latency
    over the corpus's conversations.

Each of (a) and (b) is timed over the whole pass (a model loaded once beforehand), best of ``--repeats``,
after one untimed warm-up pass, interleaved so that load from a neighbour hits both alike.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, help="an AvaMERG-layout folder with train.json (default: synthesise one)")
    parser.add_argument("--conversations", type=int, default=60, help="synthesised conversations")
    parser.add_argument("--bundle", type=Path, help="a bundle (default: build the tests' stand-in system)")
    parser.add_argument("--workers", type=int, default=0, help="loader workers per model for (b)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from emotrain.data.avamerg import MediaDirs, read_conversations
    from emotrain.data.pack import PackOptions, pack
    from emotrain.data.splits import SplitRecipe
    from emotrain.data.synthetic import SynthSpec, generate_corpus
    from emotrain.inference.predict import Predictor
    from emotrain.inference.sources import predict_folder, predict_shards
    from emotrain.labels import load_scheme

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = args.corpus
        if corpus is None:
            corpus = Path(tmp) / "corpus"
            generate_corpus(corpus, args.conversations, seed=0, spec=SynthSpec(), workers=2, progress=False)
        shards = Path(tmp) / "shards" / "bench"
        pack(PackOptions(source=corpus, out=shards, scheme=load_scheme("ekman7"), recipe=SplitRecipe(0.0, 0.0, 0),
                         workers=2, max_per_shard=8, progress=False))
        bundle = args.bundle
        if bundle is None:
            # the stand-in needs val and test splits to fit its fusion on: pack them separately
            sys.path.insert(0, str(REPO / "tests"))
            from predict_system import make_system

            fit_shards = Path(tmp) / "shards" / "fit"
            pack(PackOptions(source=corpus, out=fit_shards, scheme=load_scheme("ekman7"),
                             recipe=SplitRecipe(0.3, 0.3, 0), workers=2, max_per_shard=8, progress=False))
            bundle = make_system(Path(tmp) / "system", fit_shards)["bundle"]
        predictor = Predictor.load(bundle)
        media = MediaDirs.locate(corpus)
        json_path = corpus / "train.json"

        def raw() -> int:
            return len(predict_folder(predictor, json_path, media)[0])

        def shard() -> int:
            return len(predict_shards(predictor, shards, "train", num_workers=args.workers)[0])

        runs: dict[str, list[tuple[float, int]]] = {"raw folder": [], "shards": []}
        raw(), shard()  # warm-up: imports, file caches
        for _ in range(args.repeats):
            for name, fn in (("raw folder", raw), ("shards", shard)):
                start = time.perf_counter()
                turns = fn()
                runs[name].append((time.perf_counter() - start, turns))
        rates = {}
        for name, timings in runs.items():
            seconds, turns = min(timings)
            rates[name] = turns / seconds
            print(f"predict from {name:<10}: {turns} turns in {seconds:.2f} s  {turns / seconds:.1f} turns/s")
        print(f"shards vs raw folder: {rates['shards'] / rates['raw folder']:.2f}x "
              f"(shard workers per model: {args.workers})")

        records = __import__("json").loads(json_path.read_text(encoding="utf-8"))
        usable = {c.conversation_id for c in read_conversations(json_path)[0]}
        latencies, turns = [], []
        for record in records:
            if str(record.get("conversation_id")) not in usable:
                continue
            start = time.perf_counter()
            result = predictor.predict_conversation(record, media=media)
            latencies.append(time.perf_counter() - start)
            turns.append(len(result.turns))
        ms = np.array(latencies[1:]) * 1000  # the first call pays the tokenizer's warm-up
        print(f"Python API, one conversation ({np.mean(turns):.1f} turns on average): median {np.median(ms):.0f} ms, "
              f"p90 {np.percentile(ms, 90):.0f} ms over {len(ms)} conversations")


if __name__ == "__main__":
    main()
