"""Adapters: each reproduces its model's forward; the fast BERT path is exact."""

import pytest
import torch

from intgrads_zmq.errors import ModelLoadError
from intgrads_zmq.models.adapters import (
    BertEncoderAdapter,
    HookAdapter,
    InputsEmbedsAdapter,
    first_token_layer,
)
from intgrads_zmq.models.factory import build_adapter
from intgrads_zmq.testing.tiny_models import LABELS


def test_adapter_kinds(tiny_bert, tiny_xlnet, demo):
    assert isinstance(tiny_bert, BertEncoderAdapter) and tiny_bert.fast and tiny_bert.prune_last_layer
    assert isinstance(demo, BertEncoderAdapter) and demo.fast and not demo.prune_last_layer
    assert isinstance(tiny_xlnet, InputsEmbedsAdapter)
    assert tiny_bert.labels == list(LABELS)


def test_first_token_layer_equals_the_full_layer(tiny_bert):
    layer = tiny_bert.model.bert.encoder.layer[-1]
    hidden = torch.randn(3, 11, tiny_bert.size_hints()["hidden"])
    with torch.no_grad():
        full = layer(hidden)
        full = full[0] if isinstance(full, tuple) else full
        torch.testing.assert_close(first_token_layer(layer, hidden), full[:, :1], rtol=1e-5, atol=1e-6)


def test_fast_path_equals_hook_path_with_gradients(tiny_bert):
    encoded = tiny_bert.encode("a great film , not boring !", 64)
    points = torch.randn(4, encoded.length, tiny_bert.size_hints()["hidden"], requires_grad=True)
    fast = tiny_bert.logits_from_layer(points, encoded)
    (g_fast,) = torch.autograd.grad(fast[:, 1].sum(), points)
    tiny_bert.fast = False
    try:
        slow = tiny_bert.logits_from_layer(points, encoded)
        (g_slow,) = torch.autograd.grad(slow[:, 1].sum(), points)
    finally:
        tiny_bert.fast = True
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_fast, g_slow, rtol=1e-5, atol=1e-6)


def test_a_wrong_fast_path_falls_back_to_the_hook(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model.classify_hidden = lambda hidden: model.classifier(hidden[:, -1])  # not what forward does
    model.head_reads_cls_only = False
    adapter = build_adapter(model, tokenizer, name="x", device=torch.device("cpu"))
    assert isinstance(adapter, BertEncoderAdapter) and adapter.fast is False


def test_roberta_keeps_the_inputs_positions_for_a_pad_baseline(tmp_path):
    from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification

    from intgrads_zmq.testing.tiny_models import make_tiny_bert

    folder = make_tiny_bert(tmp_path / "vocab")

    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = RobertaConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32, pad_token_id=tokenizer.pad_token_id,
                           max_position_embeddings=80, num_labels=2)
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(config).eval()
    adapter = build_adapter(model, tokenizer, name="r", device=torch.device("cpu"))
    assert isinstance(adapter, BertEncoderAdapter) and adapter.fast
    encoded = adapter.encode("a great film", 32)
    pad_ids = torch.full_like(encoded.input_ids, tokenizer.pad_token_id)
    baseline = adapter.layer_output(pad_ids, encoded)
    emb = model.roberta.embeddings
    expected_positions = emb.position_embeddings(encoded.extras["position_ids"])
    expected = emb.LayerNorm(emb.word_embeddings(pad_ids) + expected_positions
                             + emb.token_type_embeddings(torch.zeros_like(pad_ids)))
    torch.testing.assert_close(baseline, expected, rtol=1e-5, atol=1e-6)
    assert adapter.max_positions == 78


def test_generic_models_go_through_the_hook(tiny_bert_dir):
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    config = DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=16, n_layers=1, n_heads=2, hidden_dim=32, num_labels=3)
    torch.manual_seed(0)
    adapter = build_adapter(DistilBertForSequenceClassification(config).eval(), tokenizer, name="d",
                            device=torch.device("cpu"))
    assert type(adapter) is HookAdapter
    assert adapter.labels == ["LABEL_0", "LABEL_1", "LABEL_2"]


def test_a_model_without_an_embedding_layer_is_a_clear_error(tiny_bert_dir):
    from transformers import AutoTokenizer

    class Opaque(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return torch.zeros(input_ids.shape[0], 2)

    with pytest.raises(ModelLoadError, match="cannot attribute"):
        build_adapter(Opaque(), AutoTokenizer.from_pretrained(tiny_bert_dir), name="o",
                      device=torch.device("cpu"), labels=["a", "b"])
