"""The four seed outputs, their shapes and consistency, and engine behaviour:
chunking, bf16, completeness, targets, truncation, memory and deadlines."""

import time

import pytest
import torch

from intgrads_zmq.engine import ChunkPlanner, attribute
from intgrads_zmq.engine.memory import bytes_per_step
from intgrads_zmq.errors import BadRequest, DeadlineExceeded, OutOfMemory
from intgrads_zmq.options import TENSOR_FIELDS, AttributionOptions
from intgrads_zmq.sizes import parse_bytes

TEXT = "a great film , not boring !"
ORDINARY = [
    "A great film with wonderful acting.",
    "This movie was a boring mess.",
    "I loved the music but the plot was thin.",
    "The worst film I have seen this year.",
    "Funny, warm and beautifully shot.",
]


def test_shapes_of_the_four_outputs(tiny_bert):
    result = attribute(tiny_bert, TEXT, AttributionOptions(n_steps=9))
    tokens = len(result.meta["tokens"])
    hidden = tiny_bert.size_hints()["hidden"]
    t = result.tensors
    assert set(t) == set(TENSOR_FIELDS)
    assert t["integrated_gradients"].shape == (1, tokens, hidden)
    assert t["intermediate_gradients"].shape == (9, tokens, hidden)
    assert t["step_sizes"].shape == (9, 1)
    assert t["intermediates"].shape == (9, tokens, hidden)
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in t.values())


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_left"])
def test_seed_recipe_reproduces_integrated_gradients(tiny_xlnet, method):
    """grads x step sizes, summed over steps, x (input - baseline) == IG."""
    result = attribute(tiny_xlnet, TEXT, AttributionOptions(n_steps=10, method=method, baseline="rand-norm"))
    t, alphas = result.tensors, result.meta["alphas"]
    diff = (t["intermediates"][-1] - t["intermediates"][0]) / (alphas[-1] - alphas[0])
    recipe = (t["intermediate_gradients"] * t["step_sizes"][:, :, None]).sum(0, keepdim=True) * diff
    torch.testing.assert_close(recipe, t["integrated_gradients"], rtol=1e-4, atol=1e-6)


def test_integrand_and_per_token_sums_agree_with_tensors(tiny_bert):
    result = attribute(tiny_bert, TEXT, AttributionOptions(n_steps=8, baseline="unk"))
    t, meta = result.tensors, result.meta
    assert meta["attributions"] == pytest.approx(t["integrated_gradients"][0].sum(-1).tolist(), rel=1e-5, abs=1e-6)
    weights = t["step_sizes"][:, 0].double()
    assert float((weights * torch.tensor(meta["path_integrand"])).sum()) == pytest.approx(
        meta["attribution_sum"], rel=1e-4, abs=1e-6
    )


def test_fields_select_what_is_kept(tiny_bert):
    result = attribute(tiny_bert, TEXT, AttributionOptions(n_steps=5, fields=("step_sizes",)))
    assert list(result.tensors) == ["step_sizes"]
    assert result.meta["attributions"]  # the summary is always there


@pytest.mark.parametrize("text", ORDINARY)
def test_completeness_of_the_demo_model(demo, text):
    """Sum of attributions == F(x) - F(x') within 1% at 50 steps (pad baseline)."""
    meta = attribute(demo, text, AttributionOptions(n_steps=50)).meta
    delta = meta["f_input"] - meta["f_baseline"]
    assert abs(delta) > 1.0
    assert meta["completeness_error"] <= 0.01 * abs(delta)


def test_chunking_does_not_change_results(tiny_bert):
    options = AttributionOptions(n_steps=13, baseline="rand-unif")
    whole = attribute(tiny_bert, TEXT, options, planner=ChunkPlanner(budget_bytes=1 << 34))
    single = attribute(tiny_bert, TEXT, options, planner=ChunkPlanner(budget_bytes=1))
    assert whole.meta["timings"]["chunks"] == 1 and single.meta["timings"]["chunks"] == 13
    for name in TENSOR_FIELDS:
        # Chunk size changes the GEMM blocking, so sums round differently: allow
        # float32 rounding accumulated over a few dozen operations at the tensor's scale.
        scale = float(whole.tensors[name].abs().max())
        atol = 64 * torch.finfo(torch.float32).eps * scale
        torch.testing.assert_close(whole.tensors[name], single.tensors[name], rtol=1e-5, atol=atol)


def test_bf16_stays_close_to_float32(demo):
    options = AttributionOptions(n_steps=20)
    exact = attribute(demo, ORDINARY[0], options).tensors["integrated_gradients"]
    fast = attribute(demo, ORDINARY[0], options, dtype="bf16").tensors["integrated_gradients"]
    assert float((fast - exact).norm() / exact.norm()) < 2e-2


def test_random_baselines_are_reproducible_from_the_seed(tiny_bert):
    def run(seed):
        options = AttributionOptions(n_steps=4, baseline="rand-norm", seed=seed)
        return attribute(tiny_bert, TEXT, options).tensors["intermediates"][0]

    torch.testing.assert_close(run(5), run(5), rtol=0, atol=0)
    assert not torch.equal(run(5), run(6))


def test_target_by_index_by_label_and_by_prediction(tiny_bert):
    options = AttributionOptions(n_steps=3)
    predicted = attribute(tiny_bert, TEXT, options).meta
    assert predicted["target"] == max(range(2), key=lambda i: predicted["probabilities"][i])
    by_name = attribute(tiny_bert, TEXT, AttributionOptions(n_steps=3, target="Positive")).meta
    assert by_name["target"] == 1 and by_name["target_label"] == "positive"
    assert sum(by_name["probabilities"]) == pytest.approx(1.0)


@pytest.mark.parametrize("target", [2, "neutral"])
def test_bad_targets_name_the_field(tiny_bert, target):
    with pytest.raises(BadRequest) as err:
        attribute(tiny_bert, TEXT, AttributionOptions(n_steps=3, target=target))
    assert err.value.field == "target"


def test_truncation_as_the_seed_did(tiny_bert):
    long_text = " ".join(["great film"] * 100)
    meta = attribute(tiny_bert, long_text, AttributionOptions(n_steps=2, max_length=16)).meta
    assert meta["truncated"] is True
    assert len(meta["tokens"]) == 16 and meta["tokens"][-1] == "[SEP]"
    assert attribute(tiny_bert, TEXT, AttributionOptions(n_steps=2)).meta["truncated"] is False


def test_long_input_many_steps_runs_in_chunks_within_budget(tiny_bert):
    long_text = " ".join(["a wonderful film"] * 60)
    budget = parse_bytes("64MiB")
    planner = ChunkPlanner(budget_bytes=budget)
    result = attribute(tiny_bert, long_text, AttributionOptions(n_steps=300, max_length=128), planner=planner)
    tokens = len(result.meta["tokens"])
    chunk = result.meta["timings"]["chunk_steps"]
    assert 1 <= chunk < 300
    assert chunk * bytes_per_step(tiny_bert.size_hints(), tokens, "float32") <= budget
    assert result.tensors["intermediate_gradients"].shape[0] == 300


def test_out_of_memory_in_a_chunk_retries_smaller(tiny_bert):
    options = AttributionOptions(n_steps=16)
    seen = []

    def simulated_oom(steps):
        seen.append(steps)
        if steps > 4:
            raise torch.OutOfMemoryError("simulated: out of memory")

    planner = ChunkPlanner(budget_bytes=1 << 34)
    result = attribute(tiny_bert, TEXT, options, planner=planner, before_chunk=simulated_oom)
    reference = attribute(tiny_bert, TEXT, options)
    assert seen[:3] == [16, 8, 4]
    assert planner.shrink < 1.0
    torch.testing.assert_close(result.tensors["integrated_gradients"], reference.tensors["integrated_gradients"])


def test_out_of_memory_at_one_step_is_a_clear_error(tiny_bert):
    def always_oom(_steps):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")

    with pytest.raises(OutOfMemory):
        attribute(tiny_bert, TEXT, AttributionOptions(n_steps=4), before_chunk=always_oom)


def test_deadline_is_checked_between_chunks(tiny_bert):
    with pytest.raises(DeadlineExceeded):
        attribute(tiny_bert, TEXT, AttributionOptions(n_steps=4), deadline=time.monotonic() - 1)


def test_parameters_carry_no_gradient(tiny_bert, tiny_xlnet, demo):
    for adapter in (tiny_bert, tiny_xlnet, demo):
        assert not any(p.requires_grad for p in adapter.model.parameters())
