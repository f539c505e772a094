"""The time trial: its CLI end to end, and that both sides do the same work."""

from __future__ import annotations

import subprocess

import pytest
import torch

from intgrads_zmq.engine import attribute
from intgrads_zmq.options import AttributionOptions
from intgrads_zmq.testing.reference import OriginalRecipe
from intgrads_zmq.testing.stack import PYTHON, REPO, base_env
from intgrads_zmq.testing.texts import review_texts

# The table's row labels (bench/trial_report.py); tests never import bench/.
OURS = "intgrads-zmq (one pass, 4 outputs)"
RECIPE = "original recipe (Captum LayerIntegratedGradients + separate intermediate-gradients pass)"
TEXT = ("a great film with wonderful acting , but the story is not very good "
        "and the ending is sad . i loved the music !")


def test_cli_smoke_prints_the_table(tiny_bert_dir):
    command = [PYTHON, "-m", "bench.time_trial", "--model", str(tiny_bert_dir), "--examples", "2",
               "--repeats", "1", "--length", "32", "--n-steps", "4", "--vs-captum"]
    done = subprocess.run(command, cwd=REPO, env=base_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "| method" in out and "s/example median" in out and "speed-up" in out
    assert OURS in out and RECIPE in out
    rows = [line for line in out.splitlines() if line.startswith(("| intgrads-zmq", "| original"))]
    assert len(rows) == 2 and all("| 32 " in row for row in rows)  # tokens per example
    assert "targets agree" in out
    assert "warm-up" in done.stderr and "recipe text 2" in done.stderr  # progress: stderr only
    assert "recipe text" not in out


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize(("model", "baseline"), [("tiny_bert", "pad"), ("tiny_bert", "zero"),
                                                 ("tiny_xlnet", "unk"), ("demo", "rand-norm")])
def test_recipe_matches_our_engine(request, model, baseline):
    adapter = request.getfixturevalue(model)
    options = AttributionOptions(n_steps=6, baseline=baseline, max_length=24, seed=5)
    ours = attribute(adapter, TEXT, options)
    recipe = OriginalRecipe(adapter).run(TEXT, max_length=24, baseline=baseline, seed=5,
                                         n_steps=6, method="gausslegendre", batch=4)
    assert recipe["target"] == ours.meta["target"]
    assert relative(ours.tensors["integrated_gradients"], recipe["integrated_gradients"]) < 1e-5
    assert relative(ours.tensors["intermediate_gradients"], recipe["intermediate_gradients"]) < 1e-5
    assert torch.allclose(ours.tensors["step_sizes"], recipe["step_sizes"])
    assert relative(ours.tensors["intermediates"], recipe["intermediates"]) < 1e-6


def test_built_texts_are_reproducible_varied_and_long_enough(demo):
    texts = review_texts(4, length=512, seed=7)
    assert texts == review_texts(4, length=512, seed=7)
    assert texts != review_texts(4, length=512, seed=8)
    assert len(set(texts)) == 4
    for text in texts:
        encoded = demo.encode(text, 512)
        assert encoded.truncated and encoded.length == 512
