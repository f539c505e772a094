"""The benchmarks' input texts; built in :mod:`intgrads_zmq.testing.texts`,
where the tests can use them too (bench/ and tests/ never import each other)."""

from intgrads_zmq.testing.texts import read_texts, review_texts

__all__ = ["read_texts", "review_texts"]
