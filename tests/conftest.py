"""Shared fixtures: tiny models on disk and loaded adapters (session-wide)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    from intgrads_zmq.testing.tiny_models import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_xlnet_dir(tmp_path_factory):
    from intgrads_zmq.testing.tiny_models import make_tiny_xlnet

    return make_tiny_xlnet(tmp_path_factory.mktemp("tiny-xlnet"))


def _load(spec):
    import torch

    from intgrads_zmq.models.loader import load_model

    return load_model(spec, torch.device("cpu"))


@pytest.fixture(scope="session")
def tiny_bert(tiny_bert_dir):
    from intgrads_zmq.models.spec import ModelSpec

    return _load(ModelSpec(kind="hf", path=str(tiny_bert_dir), name="tiny-bert"))


@pytest.fixture(scope="session")
def tiny_xlnet(tiny_xlnet_dir):
    from intgrads_zmq.models.spec import ModelSpec

    return _load(ModelSpec(kind="hf", path=str(tiny_xlnet_dir), name="tiny-xlnet"))


@pytest.fixture(scope="session")
def demo():
    from intgrads_zmq.models.spec import ModelSpec

    return _load(ModelSpec())
