"""emotrain: multimodal emotion recognition on AvaMERG, from shards to late fusion."""

__version__ = "0.1.0"
