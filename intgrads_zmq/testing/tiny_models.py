"""Tiny BERT and XLNet classifiers saved as Hugging Face directories.

Random weights, a small vocabulary written by the test (BERT) or a small
Unigram model trained on the spot (XLNet): real architectures, real
tokenizers, no downloads, a few hundred milliseconds to build.
"""

from __future__ import annotations

from pathlib import Path

import torch

LABELS = ("negative", "positive")
WORDS = (
    "a the this that is was it film movie story plot actor actors acting great good "
    "bad terrible boring wonderful awful fine not very really and but of to in with "
    "love loved hate hated enjoyed best worst ever seen funny sad long short ending "
    "music scene scenes character characters director script fun dull brilliant mess"
).split()
PUNCTUATION = [".", ",", "!", "?", "'", "-"]
CORPUS = [
    "a great film with wonderful acting .",
    "this movie was terrible and boring .",
    "the story is not very good , but the music is great !",
    "i loved the characters and the ending .",
    "the worst script ever , a dull mess .",
    "brilliant director , funny scenes and a sad ending .",
    "it was fine , the actors really enjoyed it .",
    "i hated this long boring film .",
] * 4


def _label_maps(labels: tuple[str, ...]) -> dict:
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
    }


def make_tiny_bert(folder: Path, *, seed: int = 0, labels: tuple[str, ...] = LABELS,
                   hidden: int = 32, layers: int = 2, heads: int = 2, positions: int = 128) -> Path:
    """A BertForSequenceClassification + BertTokenizerFast directory
    (``positions``: the longest input, in tokens)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *PUNCTUATION, *WORDS]
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=positions,
        initializer_range=0.2, **_label_maps(labels),
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_tiny_xlnet(folder: Path, *, seed: int = 0, labels: tuple[str, ...] = LABELS,
                    hidden: int = 32, layers: int = 2, heads: int = 2) -> Path:
    """An XLNetForSequenceClassification + a Unigram tokenizer trained here."""
    from tokenizers import SentencePieceUnigramTokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import XLNetConfig, XLNetForSequenceClassification, XLNetTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<unk>", "<s>", "</s>", "<cls>", "<sep>", "<mask>", "<eop>", "<eod>"]
    raw = SentencePieceUnigramTokenizer()
    raw.train_from_iterator(CORPUS, vocab_size=120, special_tokens=specials, unk_token="<unk>")
    sep, cls = raw.token_to_id("<sep>"), raw.token_to_id("<cls>")
    raw.post_processor = TemplateProcessing(
        single="$A:0 <sep>:0 <cls>:2",
        pair="$A:0 <sep>:0 $B:1 <sep>:1 <cls>:2",
        special_tokens=[("<sep>", sep), ("<cls>", cls)],
    )
    tokenizer = XLNetTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
        eos_token="</s>", cls_token="<cls>", sep_token="<sep>", mask_token="<mask>",
        padding_side="left",
    )
    config = XLNetConfig(
        vocab_size=raw.get_vocab_size(), d_model=hidden, n_layer=layers, n_head=heads,
        d_inner=2 * hidden, initializer_range=0.2, use_mems_eval=False,
        pad_token_id=raw.token_to_id("<pad>"), **_label_maps(labels),
    )
    torch.manual_seed(seed)
    model = XLNetForSequenceClassification(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
