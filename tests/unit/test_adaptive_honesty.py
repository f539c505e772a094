"""The adaptive rule's error estimate is honest on real inputs.

The demo model on review sentences it was not calibrated on (the calibration
used movie_reviews_test.jsonl; these come from movie_reviews_tune.jsonl):
the achieved per-token error against a 256-step Gauss-Legendre reference is
within the tolerance on at least 95 % of inputs and never above 3x it.
Marked slow: about a minute on two cores (one reference per input).
"""

import json
from pathlib import Path

import numpy as np
import pytest

from intgrads_zmq.engine import attribute
from intgrads_zmq.options import AttributionOptions

TUNE = Path(__file__).resolve().parents[1] / "data" / "movie_reviews_tune.jsonl"
TOLERANCE = 0.01
COUNT = 15


@pytest.mark.slow
@pytest.mark.parametrize("baseline", ["pad", "zero"])
def test_achieved_error_is_within_the_tolerance(demo, baseline):
    texts = [json.loads(line)["text"] for line in TUNE.read_text().splitlines() if line.strip()][:COUNT]
    errors, converged = [], []
    for text in texts:
        ref_options = AttributionOptions(n_steps=256, baseline=baseline, fields=("integrated_gradients",))
        reference = np.array(attribute(demo, text, ref_options).meta["attributions"])
        options = AttributionOptions(n_steps="auto", tolerance=TOLERANCE, baseline=baseline,
                                     fields=("integrated_gradients",))  # fmt: skip
        meta = attribute(demo, text, options).meta
        converged.append(meta["converged"])
        errors.append(np.linalg.norm(np.array(meta["attributions"]) - reference) / np.linalg.norm(reference))
    errors = np.array(errors)
    assert all(converged)
    assert np.mean(errors <= TOLERANCE) >= 0.95, errors
    assert errors.max() <= 3 * TOLERANCE, errors
