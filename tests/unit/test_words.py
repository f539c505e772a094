"""Word aggregation: pieces of every tokenizer family merge into the same words
of the original text, spans slice the text, and word sums add back to tokens."""

from __future__ import annotations

import io
import math

import pytest
import torch

from intgrads_zmq.errors import BadRequest
from intgrads_zmq.models.base import EncodedText
from intgrads_zmq.models.factory import build_adapter
from intgrads_zmq.models.words import aggregate_words, word_assignment, word_units
from intgrads_zmq.testing.tiny_models import CORPUS

EPS64 = torch.finfo(torch.float64).eps
FAMILIES = ("tiny_bert", "tiny_xlnet", "spiece_xlnet", "tiny_roberta")
# Accents (composed and e + combining accent), emoji with a skin tone and with a
# variation selector, a flag, a contraction, runs of spaces, a tab and a newline.
TEXTS = {
    "accents": "  Café  naïve film,   don't 👍🏽 great!!  ok ",
    "combining": "the e\u0301te\u0301 film\twas\n\nfun ❤️ 🇫🇷 .",
    "plain": "a great film with wonderful acting , but the ending was boring .",
}
EXPECTED_WORDS = {
    "accents": ["Café", "naïve", "film", ",", "don't", "👍🏽", "great", "!", "!", "ok"],
    "combining": ["the", "e\u0301te\u0301", "film", "was", "fun", "❤️", "🇫🇷", "."],
    "plain": "a great film with wonderful acting , but the ending was boring .".split(),
}


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory):
    """RoBERTa with a byte-level BPE trained here, wrapped as transformers' tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaTokenizer

    folder = tmp_path_factory.mktemp("roberta-bpe")
    raw = ByteLevelBPETokenizer()
    raw.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    raw.save_model(str(folder))
    tokenizer = RobertaTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    assert tokenizer.is_fast and tokenizer.convert_ids_to_tokens(tokenizer("a film")["input_ids"])[1] == "a"
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32, max_position_embeddings=200,
                           pad_token_id=tokenizer.pad_token_id, num_labels=3)
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(config).eval()
    return build_adapter(model, tokenizer, name="roberta", device=torch.device("cpu"))


@pytest.fixture(scope="module")
def spiece_xlnet(tmp_path_factory, tiny_xlnet):
    """XLNet's tokenizer as the project builds it from a bare spiece.model file."""
    spm = pytest.importorskip("sentencepiece")
    from intgrads_zmq.models.tokenizers import load_tokenizer

    folder = tmp_path_factory.mktemp("spiece")
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=buffer, vocab_size=60, model_type="unigram",
        control_symbols=["<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>"],
        hard_vocab_limit=False, minloglevel=2)
    (folder / "spiece.model").write_bytes(buffer.getvalue())
    tokenizer = load_tokenizer(folder, family="xlnet", vocab_size=tiny_xlnet.model.config.vocab_size)
    return build_adapter(tiny_xlnet.model, tokenizer, name="spiece", device=torch.device("cpu"))


def _adapter(request, family):
    return request.getfixturevalue(family)


def _check_words(text, encoded, result):
    """Spans slice the text to the word; added tokens stand alone; order is the text's."""
    words, spans, token_words = result["words"], result["word_spans"], result["token_words"]
    assert len(words) == len(spans) and len(token_words) == encoded.length
    assert sorted(set(token_words)) == list(range(len(words)))  # every word has a token
    for i, special in enumerate(encoded.special):
        word = token_words[i]
        if special:
            assert spans[word] is None and words[word] == encoded.tokens[i]
            assert token_words.count(word) == 1
    text_spans = [s for s in spans if s is not None]
    for word, span in zip(words, spans, strict=True):
        if span is not None:
            assert text[span[0]:span[1]] == word and word == word.strip() and word
    assert all(a[1] <= b[0] for a, b in zip(text_spans, text_spans[1:], strict=False))  # in order


def _check_sums(encoded, result, scores):
    """Each word is the sum of its tokens; the words add up to the tokens, per class too."""
    token_words = result["token_words"]
    per_class = result["word_attributions"] if scores.dim() == 2 else [result["word_attributions"]]
    rows = scores if scores.dim() == 2 else scores[None]
    assert len(per_class) == len(rows)
    for values, row in zip(per_class, rows.double().tolist(), strict=True):
        assert len(values) == len(result["words"])
        scale = sum(abs(v) for v in row) * EPS64 * 4
        for word, value in enumerate(values):
            pieces = [row[i] for i, w in enumerate(token_words) if w == word]
            assert value == pytest.approx(math.fsum(pieces), abs=scale, rel=0)
        assert math.fsum(values) == pytest.approx(math.fsum(row), abs=scale, rel=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", sorted(TEXTS))
def test_every_family_gives_the_same_words_of_the_text(request, family, name):
    adapter = _adapter(request, family)
    text = TEXTS[name]
    encoded = adapter.encode(text, 256)
    assert not encoded.truncated and encoded.offsets is not None
    gen = torch.Generator().manual_seed(len(text))
    scores = torch.randn(encoded.length, generator=gen)
    result = aggregate_words(adapter, text, encoded, scores)
    _check_words(text, encoded, result)
    _check_sums(encoded, result, scores)
    # The same words whatever the tokenizer, the added tokens apart.
    plain = [w for w, s in zip(result["words"], result["word_spans"], strict=True) if s is not None]
    assert plain == EXPECTED_WORDS[name], [encoded.tokens, encoded.offsets]
    # Every character that is not a space lies in exactly one word.
    covered = sorted(i for s in result["word_spans"] if s for i in range(*s))
    assert covered == [i for i, c in enumerate(text) if not c.isspace()]
    # A class axis gives one list per class, each summing like the single row.
    classes = torch.randn(3, encoded.length, generator=gen, dtype=torch.float64)
    per_class = aggregate_words(adapter, text, encoded, classes)
    assert per_class["words"] == result["words"]
    _check_sums(encoded, per_class, classes)


@pytest.mark.parametrize("family", FAMILIES)
def test_truncated_input_keeps_the_words_it_has(request, family):
    adapter = _adapter(request, family)
    text = TEXTS["accents"] * 3
    full = adapter.encode(text, 512)
    full_words = aggregate_words(adapter, text, full, torch.zeros(full.length))
    specials = sum(full.special)
    for limit in range(specials + 2, min(full.length, specials + 16)):
        encoded = adapter.encode(text, limit)
        assert encoded.truncated and encoded.length == limit
        scores = torch.linspace(-1, 1, encoded.length)
        result = aggregate_words(adapter, text, encoded, scores)
        _check_words(text, encoded, result)
        _check_sums(encoded, result, scores)
        spans = [s for s in result["word_spans"] if s]
        expected = [s for s in full_words["word_spans"] if s][: len(spans)]
        # Whole words as before the cut; the word the cut went through ends at its last kept piece.
        assert spans[:-1] == expected[:-1]
        last_token_end = max(end for (_, end), sp in zip(encoded.offsets, encoded.special,
                                                           strict=True) if not sp)
        assert spans[-1][0] == expected[-1][0]
        if last_token_end > expected[-1][0]:
            assert spans[-1][1] == min(expected[-1][1], last_token_end)
        else:  # only the space before the word was kept (RoBERTa's lone "Ġ"): the word stays whole
            assert spans[-1] == expected[-1]


def _encoded(tokens, offsets, special=None, truncated=False):
    return EncodedText(torch.zeros((1, len(tokens)), dtype=torch.long), {}, tokens, truncated,
                       offsets=offsets, special=special or [False] * len(tokens))


def test_units_of_a_text():
    # A zero-width joiner extends the grapheme before it: x_y + ZWJ is one word, the family one emoji.
    text = "don't  ‘stop’ — 3.5 x_y\u200d👨‍👩‍👧 l'été,ok"
    assert [text[a:b] for a, b in word_units(text)] == [
        "don't", "‘", "stop", "’", "—", "3", ".", "5", "x_y\u200d", "👨‍👩‍👧", "l'été", ",", "ok"]
    assert word_units("") == [] and word_units(" \t\n") == []


def test_a_piece_across_units_joins_them_and_lone_spaces_join_the_next_word():
    text = " film. ok  "
    # "film" "." "ok": a piece "m." spans two units; lone space pieces, one with empty offsets.
    tokens = ["<s>", "Ġ", "fil", "m.", "Ġ", "ok", "Ġ", "</s>"]
    offsets = [(0, 0), (0, 0), (1, 4), (4, 6), (6, 7), (7, 9), (9, 10), (0, 0)]
    special = [True, False, False, False, False, False, False, True]
    token_words, words, spans = word_assignment(text, _encoded(tokens, offsets, special))
    assert words == ["<s>", "film.", "ok", "</s>"]
    assert spans == [None, [1, 6], [7, 9], None]
    assert token_words == [0, 1, 1, 1, 2, 2, 2, 3]


def test_a_typed_special_token_is_a_word_of_its_own_with_its_span():
    text = "good [SEP] film"
    tokens = ["[CLS]", "good", "[SEP]", "film", "[SEP]"]
    offsets = [(0, 0), (0, 4), (5, 10), (11, 15), (0, 0)]
    special = [True, False, True, False, True]
    _, words, spans = word_assignment(text, _encoded(tokens, offsets, special))
    assert words == ["[CLS]", "good", "[SEP]", "film", "[SEP]"]
    assert spans == [None, [0, 4], [5, 10], [11, 15], None]


def test_no_offsets_is_a_clear_bad_request(tiny_bert):
    encoded = tiny_bert.encode("a great film", 32)
    encoded.offsets = None
    with pytest.raises(BadRequest) as err:
        aggregate_words(tiny_bert, "a great film", encoded, torch.zeros(encoded.length))
    assert err.value.field == "aggregate" and "tiny-bert" in err.value.description
    with pytest.raises(ValueError, match="tokens on the last axis"):
        aggregate_words(tiny_bert, "a great film", tiny_bert.encode("a great film", 32), torch.zeros(2))
