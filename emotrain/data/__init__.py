"""Data: reading AvaMERG, the synthetic corpus, shard packing and streaming."""
