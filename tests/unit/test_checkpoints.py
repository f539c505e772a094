"""Loaders for the original server's checkpoints (intgrads_zmq.models: checkpoints,
state_dicts, tokenizers).

Checkpoints are built here with tiny shapes in the exact layout the original
files have; BERT is checked against a forward pass written out by hand over
the raw tensors, XLNet against the Hugging Face model the file came from.
"""

from __future__ import annotations

import io
import json
import math
import pickle
from pathlib import Path

import pytest
import torch
from transformers import BertTokenizer, XLNetConfig, XLNetForSequenceClassification

from intgrads_zmq.errors import ModelLoadError
from intgrads_zmq.models.checkpoints import (
    OriginalBertClassifier,
    load_original_bert,
    load_original_xlnet,
)
from intgrads_zmq.models.state_dicts import read_state_dict
from intgrads_zmq.models.tokenizers import load_tokenizer

VOCAB, HIDDEN, LAYERS, HEADS, INTER, POSITIONS = 100, 32, 2, 2, 37, 40
WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "the",
    "movie",
    "was",
    "great",
    "bad",
    "!",
    "##s",
]


# ---------------------------------------------------------------- helpers


def old_bert_state(prefix: str = "", seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the old BERT port's key names (gamma/beta, pooler, head)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    def layer_norm(name: str) -> dict[str, torch.Tensor]:
        return {
            f"{name}.gamma": 1 + rand(HIDDEN, scale=0.1),
            f"{name}.beta": rand(HIDDEN, scale=0.1),
        }

    def linear(name: str, out: int, inp: int) -> dict[str, torch.Tensor]:
        return {f"{name}.weight": rand(out, inp), f"{name}.bias": rand(out, scale=0.1)}

    state = {
        "bert.embeddings.word_embeddings.weight": rand(VOCAB, HIDDEN),
        "bert.embeddings.position_embeddings.weight": rand(POSITIONS, HIDDEN),
        "bert.embeddings.token_type_embeddings.weight": rand(2, HIDDEN),
        **layer_norm("bert.embeddings.LayerNorm"),
    }
    for i in range(LAYERS):
        p = f"bert.encoder.layer.{i}."
        for part in ("query", "key", "value"):
            state.update(linear(p + "attention.self." + part, HIDDEN, HIDDEN))
        state.update(linear(p + "attention.output.dense", HIDDEN, HIDDEN))
        state.update(layer_norm(p + "attention.output.LayerNorm"))
        state.update(linear(p + "intermediate.dense", INTER, HIDDEN))
        state.update(linear(p + "output.dense", HIDDEN, INTER))
        state.update(layer_norm(p + "output.LayerNorm"))
    state.update(linear("bert.pooler.dense", HIDDEN, HIDDEN))
    state.update(linear("classifier", 2, HIDDEN))
    return {prefix + k: v for k, v in state.items()}


def reference_bert_logits(
    sd: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor
) -> torch.Tensor:
    """The old port's forward, written out with plain tensor ops."""

    def tf_layer_norm(x: torch.Tensor, name: str) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        var = (x - mean).pow(2).mean(-1, keepdim=True)
        return sd[name + ".gamma"] * (x - mean) / torch.sqrt(var + 1e-12) + sd[name + ".beta"]

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ sd[name + ".weight"].T + sd[name + ".bias"]

    batch, seq = ids.shape
    head = HIDDEN // HEADS

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, seq, HEADS, head).transpose(1, 2)

    h = (
        sd["bert.embeddings.word_embeddings.weight"][ids]
        + sd["bert.embeddings.position_embeddings.weight"][torch.arange(seq)]
        + sd["bert.embeddings.token_type_embeddings.weight"][types]
    )
    h = tf_layer_norm(h, "bert.embeddings.LayerNorm")
    additive = (1.0 - mask[:, None, None, :].float()) * -10000.0
    for i in range(LAYERS):
        p = f"bert.encoder.layer.{i}."
        q, k, v = (heads(linear(h, p + "attention.self." + n)) for n in ("query", "key", "value"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(head) + additive
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq, HIDDEN)
        attended = tf_layer_norm(
            linear(context, p + "attention.output.dense") + h, p + "attention.output.LayerNorm"
        )
        inner = linear(attended, p + "intermediate.dense")
        inner = inner * 0.5 * (1.0 + torch.erf(inner / math.sqrt(2.0)))
        h = tf_layer_norm(linear(inner, p + "output.dense") + attended, p + "output.LayerNorm")
    return linear(h[:, 0], "classifier")


def bert_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two rows, the second padded, with both token types in use."""
    ids = torch.tensor([[2, 5, 17, 42, 99, 8, 3], [2, 61, 7, 3, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]])
    types = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0]])
    return ids, mask, types


def save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def tiny_xlnet(seed: int = 0) -> XLNetForSequenceClassification:
    """A tiny XLNet classifier with large random weights, computing as the original did."""
    torch.manual_seed(seed)
    config = XLNetConfig(
        vocab_size=50,
        d_model=32,
        n_layer=2,
        n_head=2,
        d_inner=37,
        ff_activation="gelu_new",
        num_labels=2,
    )
    model = XLNetForSequenceClassification(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    return model.eval()


def write_vocab(folder: Path, words: list[str] = WORDS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    return folder


def write_spiece(folder: Path) -> Path:
    """Train a tiny SentencePiece model with XLNet's special symbols."""
    spm = pytest.importorskip("sentencepiece")
    folder.mkdir(parents=True, exist_ok=True)
    text = [
        "the movie was great and fun",
        "i hated the ending of this film",
        "a good dog is a good dog",
    ] * 20
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text),
        model_writer=buffer,
        vocab_size=36,
        model_type="unigram",
        control_symbols=["<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>"],
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (folder / "spiece.model").write_bytes(buffer.getvalue())
    return folder


class Payload:
    """Unpickling this creates a file: stands in for any code a checkpoint could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


# ---------------------------------------------------------------- BERT


@pytest.mark.parametrize("prefix", ["", "module."])
def test_bert_matches_hand_written_reference(tmp_path: Path, prefix: str) -> None:
    state = old_bert_state(prefix)
    model, tokenizer = load_original_bert(
        save(state, tmp_path / "bert.pth"), num_attention_heads=HEADS
    )
    ids, mask, types = bert_inputs()

    logits = model(ids, attention_mask=mask, token_type_ids=types).logits

    expected = reference_bert_logits(old_bert_state(), ids, mask, types)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert tokenizer is None
    assert isinstance(model, OriginalBertClassifier) and model.head_reads_cls_only
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.label2id == {"negative": 0, "positive": 1}
    assert (model.config.vocab_size, model.config.hidden_size, model.config.num_hidden_layers) == (
        VOCAB,
        HIDDEN,
        LAYERS,
    )
    assert (model.config.intermediate_size, model.config.max_position_embeddings) == (
        INTER,
        POSITIONS,
    )
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_bert_prefixed_and_bare_files_load_the_same(tmp_path: Path) -> None:
    bare, _ = load_original_bert(
        save(old_bert_state(), tmp_path / "a.pth"), num_attention_heads=HEADS
    )
    wrapped = {"state_dict": old_bert_state("module.")}
    prefixed, _ = load_original_bert(save(wrapped, tmp_path / "b.pth"), num_attention_heads=HEADS)
    for (name, a), (_, b) in zip(
        bare.state_dict().items(), prefixed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_bert_pooler_is_unused(tmp_path: Path) -> None:
    ids, mask, types = bert_inputs()
    state = old_bert_state()
    model, _ = load_original_bert(save(state, tmp_path / "a.pth"), num_attention_heads=HEADS)
    state["bert.pooler.dense.weight"] = torch.randn(HIDDEN, HIDDEN) * 5
    state["bert.pooler.dense.bias"] = torch.randn(HIDDEN) * 5
    changed, _ = load_original_bert(save(state, tmp_path / "b.pth"), num_attention_heads=HEADS)

    assert not torch.equal(model.bert.pooler.dense.weight, changed.bert.pooler.dense.weight)
    torch.testing.assert_close(
        model(ids, mask, types).logits, changed(ids, mask, types).logits, atol=0, rtol=0
    )


def test_bert_classify_hidden_reads_cls(tmp_path: Path) -> None:
    model, _ = load_original_bert(
        save(old_bert_state(), tmp_path / "a.pth"), num_attention_heads=HEADS
    )
    hidden = torch.randn(3, 5, HIDDEN)
    expected = hidden[:, 0] @ model.classifier.weight.T + model.classifier.bias
    torch.testing.assert_close(model.classify_hidden(hidden), expected)
    hidden[:, 1:] = 0
    torch.testing.assert_close(model.classify_hidden(hidden), expected)


def test_bert_accepts_word_embeddings_instead_of_ids(tmp_path: Path) -> None:
    """The attribution engine feeds embeddings along the integration path."""
    model, _ = load_original_bert(
        save(old_bert_state(), tmp_path / "a.pth"), num_attention_heads=HEADS
    )
    ids, mask, types = bert_inputs()
    embeds = model.get_input_embeddings()(ids)
    torch.testing.assert_close(
        model(attention_mask=mask, token_type_ids=types, inputs_embeds=embeds).logits,
        model(ids, mask, types).logits,
    )


def test_bert_default_heads_are_64_wide(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="num_attention_heads"):
        load_original_bert(save(old_bert_state(), tmp_path / "a.pth"))


def test_bert_ignores_known_buffers(tmp_path: Path) -> None:
    state = old_bert_state()
    state["bert.embeddings.position_ids"] = torch.arange(POSITIONS)[None]
    model, _ = load_original_bert(save(state, tmp_path / "a.pth"), num_attention_heads=HEADS)
    assert model.config.vocab_size == VOCAB


def test_bert_missing_unexpected_and_mismatched_keys(tmp_path: Path) -> None:
    state = old_bert_state()
    del state["bert.encoder.layer.1.output.dense.bias"]
    state["bert.encoder.layer.0.extra.weight"] = torch.zeros(2)
    state["classifier.bias"] = torch.zeros(3)
    with pytest.raises(ModelLoadError) as caught:
        load_original_bert(save(state, tmp_path / "bad.pth"), num_attention_heads=HEADS)
    message = str(caught.value)
    assert "bad.pth" in message
    assert "missing keys: bert.encoder.layer.1.output.dense.bias" in message
    assert "unexpected keys: bert.encoder.layer.0.extra.weight" in message
    assert "classifier.bias (3,) vs (2,)" in message


def test_bert_loader_rejects_a_foreign_checkpoint(tmp_path: Path) -> None:
    path = save(tiny_xlnet().state_dict(), tmp_path / "xlnet.pth")
    with pytest.raises(
        ModelLoadError, match="bert.embeddings.word_embeddings.weight.*BERT checkpoint"
    ):
        load_original_bert(path, num_attention_heads=HEADS)


# ---------------------------------------------------------------- XLNet


def test_xlnet_matches_source_model(tmp_path: Path) -> None:
    source = tiny_xlnet()
    state = {"module." + k: v for k, v in source.state_dict().items()}
    model, tokenizer = load_original_xlnet(save(state, tmp_path / "xlnet.pth"), size="base")
    ids = torch.tensor([[17, 3, 44, 9, 21, 4, 3], [5, 5, 30, 12, 49, 4, 3]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]])

    with torch.no_grad():
        expected = source(ids, attention_mask=mask).logits
    logits = model(ids, attention_mask=mask).logits

    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=1e-6)
    assert tokenizer is None
    config = model.config
    assert (config.d_model, config.n_layer, config.n_head, config.d_inner, config.vocab_size) == (
        32,
        2,
        2,
        37,
        50,
    )
    assert config.ff_activation == "gelu_new"  # the original ran XLNet with the tanh GELU
    assert config.use_mems_eval is False
    assert config.id2label == {0: "negative", 1: "positive"}
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_xlnet_missing_and_unexpected_keys(tmp_path: Path) -> None:
    state = {"module." + k: v for k, v in tiny_xlnet().state_dict().items()}
    del state["module.transformer.mask_emb"]
    state["module.transformer.layer.0.rel_attn.extra"] = torch.zeros(1)
    with pytest.raises(ModelLoadError) as caught:
        load_original_xlnet(save(state, tmp_path / "x.pth"))
    message = str(caught.value)
    assert "missing keys: transformer.mask_emb" in message
    assert "unexpected keys: transformer.layer.0.rel_attn.extra" in message


def test_xlnet_unknown_size(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="size"):
        load_original_xlnet(save(tiny_xlnet().state_dict(), tmp_path / "x.pth"), size="huge")


# ---------------------------------------------------------------- reading files


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_code_running_pickle_is_refused(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save({"weight": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"weight": Payload(marker)}, protocol=2))

    with pytest.raises(ModelLoadError) as caught:
        read_state_dict(path)

    assert "refused" in str(caught.value) and "execute code" in str(caught.value)
    assert str(path) in str(caught.value)
    assert not marker.exists()
    # Control: the payload is real, a full unpickle would have run it.
    if writer == "pickle":
        pickle.loads(path.read_bytes())
        assert marker.exists()


def test_wrapped_and_prefixed_state_dicts(tmp_path: Path) -> None:
    tensor = torch.arange(3.0)
    for wrapper in ("state_dict", "model_state_dict"):
        path = save({wrapper: {"module.a.weight": tensor}, "epoch": 3}, tmp_path / f"{wrapper}.pth")
        assert read_state_dict(path).keys() == {"a.weight"}
    assert torch.equal(read_state_dict(save({"a": tensor}, tmp_path / "bare.pth"))["a"], tensor)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ([torch.zeros(1)], "holds list, not a state dict"),
        ({}, "holds an empty dict"),
        ({"a": torch.zeros(1), "step": 7}, "not tensors: step"),
        ({"state_dict": {"a": "text"}}, "not tensors: a"),
    ],
)
def test_not_a_dict_of_tensors(tmp_path: Path, content: object, pattern: str) -> None:
    with pytest.raises(ModelLoadError, match=pattern):
        read_state_dict(save(content, tmp_path / "c.pth"))


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        read_state_dict(tmp_path / "absent.pth")
    with pytest.raises(ModelLoadError, match="is a directory"):
        read_state_dict(tmp_path)
    good = save({"a": torch.zeros(100)}, tmp_path / "good.pth").read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelLoadError, match="truncated.pth"):
        read_state_dict(truncated)


# ---------------------------------------------------------------- tokenizers


def test_bert_tokenizer_from_bare_vocab_txt(tmp_path: Path) -> None:
    folder = write_vocab(tmp_path / "tok")
    tokenizer = load_tokenizer(folder, family="bert", vocab_size=VOCAB)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("The movies were GREAT!")["input_ids"])
    assert tokens == ["[CLS]", "the", "movie", "##s", "[UNK]", "great", "!", "[SEP]"]


def test_bert_tokenizer_with_config_but_no_tokenizer_json(tmp_path: Path) -> None:
    """The folder shape for which AutoTokenizer in transformers 5 yields all [UNK]."""
    folder = write_vocab(tmp_path / "tok")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"do_lower_case": True}), encoding="utf-8"
    )
    tokenizer = load_tokenizer(folder, family="bert")
    assert tokenizer.tokenize("The movie") == ["the", "movie"]


def test_bert_tokenizer_from_tokenizer_json(tmp_path: Path) -> None:
    vocab = write_vocab(tmp_path / "vocab") / "vocab.txt"
    BertTokenizer(vocab=str(vocab)).save_pretrained(str(tmp_path / "tok"))
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    tokenizer = load_tokenizer(tmp_path / "tok", family="bert")
    assert tokenizer.tokenize("The movie") == ["the", "movie"]


def test_load_original_bert_with_tokenizer(tmp_path: Path) -> None:
    path = save(old_bert_state(), tmp_path / "bert.pth")
    model, tokenizer = load_original_bert(
        path, write_vocab(tmp_path / "tok"), num_attention_heads=HEADS
    )
    assert tokenizer is not None
    encoded = tokenizer(["the movie was great", "bad"], padding=True, return_tensors="pt")
    logits = model(**encoded).logits
    assert logits.shape == (2, 2)


@pytest.mark.parametrize(
    ("words", "pattern"),
    [
        (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "movie"], "maps every word"),
        ([f"w{i}" for i in range(VOCAB + 1)] + ["[UNK]", "the"], "has only 100 rows"),
    ],
)
def test_unfit_tokenizers_are_refused(tmp_path: Path, words: list[str], pattern: str) -> None:
    with pytest.raises(ModelLoadError, match=pattern):
        load_tokenizer(write_vocab(tmp_path / "tok", words), family="bert", vocab_size=VOCAB)


def test_tokenizer_folder_without_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="holds neither tokenizer.json nor vocab.txt"):
        load_tokenizer(tmp_path, family="bert")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_tokenizer(tmp_path / "absent", family="xlnet")


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b"\x0f", "unsupported protobuf wire type 7"),  # field 1 with an unknown wire type
        (b"\x0a\x80", "could not be loaded"),  # a length varint cut short
        (b"", "holds no SentencePiece vocabulary"),
    ],
)
def test_broken_spiece_model_is_refused(tmp_path: Path, content: bytes, pattern: str) -> None:
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "spiece.model").write_bytes(content)
    with pytest.raises(ModelLoadError, match=pattern):
        load_tokenizer(folder, family="xlnet")


def test_xlnet_tokenizer_from_bare_spiece_model(tmp_path: Path) -> None:
    spm = pytest.importorskip("sentencepiece")
    folder = write_spiece(tmp_path / "tok")
    source = tiny_xlnet()
    path = save({"module." + k: v for k, v in source.state_dict().items()}, tmp_path / "x.pth")

    model, tokenizer = load_original_xlnet(path, folder)

    assert tokenizer is not None
    processor = spm.SentencePieceProcessor(model_file=str(folder / "spiece.model"))
    for text in ["the movie was great", "i hated   this film.", "A good dog"]:
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == processor.encode(text)
    encoded = tokenizer("the film was good", return_tensors="pt")
    assert encoded["input_ids"][0, -2:].tolist() == [tokenizer.sep_token_id, tokenizer.cls_token_id]
    assert {tokenizer.cls_token_id, tokenizer.sep_token_id} == {
        processor.piece_to_id("<cls>"),
        processor.piece_to_id("<sep>"),
    }
    assert model(**encoded).logits.shape == (1, 2)

    # Saved the Hugging Face way, the same tokenizer comes back through tokenizer.json.
    tokenizer.save_pretrained(str(tmp_path / "saved"))
    reloaded = load_tokenizer(tmp_path / "saved", family="xlnet", vocab_size=50)
    assert reloaded("the film was good")["input_ids"] == encoded["input_ids"][0].tolist()
