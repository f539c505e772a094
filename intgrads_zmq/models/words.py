"""Token attributions merged into the words of the text the user sent.

Sub-word pieces (``un ##believ ##able``, ``▁un believ able``,
``Ġun believ able``) are an artefact of the tokenizer; a reader wants one
score per word. Each tokenizer family has its own idea of a word (BERT splits
off every punctuation mark, SentencePiece splits only on spaces, byte-level
BPE splits ``'s`` off), so the words are defined here, from the text alone,
the same way for every model:

* the text is cut into grapheme clusters (what a reader sees as one
  character: ``é`` written as e + accent, ``👍🏽``, a flag);
* a *word unit* is a run of letters, digits, marks and ``_``, where an
  apostrophe (``'`` or ``’``) between two such characters stays inside
  (``don't``); every other visible character (punctuation, symbols, emoji)
  is a unit of its own; whitespace separates units and belongs to none;
* each token covers the units its character offsets overlap. Units that
  share a token are one word (a SentencePiece piece ``e.`` joins ``film``
  and ``.``); a token that covers only whitespace (RoBERTa's lone ``Ġ``,
  whose offsets may be empty) belongs to the word that follows it, or to the
  last word when none follows;
* tokens the tokenizer added (``[CLS]``, ``<sep>``) are words of their own,
  with no span.

A word's attribution is the sum of its tokens' attributions, so the word
scores add up to the token scores. A word cut by truncation ends where its
last kept token ends (when only the space before it was kept, it keeps its
whole span).
"""

from __future__ import annotations

import bisect
from typing import Any

import regex
import torch

from ..errors import BadRequest
from .base import ClassifierAdapter, EncodedText

_GRAPHEME = regex.compile(r"\X")
_APOSTROPHES = frozenset("'\u2019")


def word_units(text: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the text's word units, in order."""
    graphemes = [(m.start(), m.end(), m.group()) for m in _GRAPHEME.finditer(text)]
    kinds = [_kind(g) for _, _, g in graphemes]
    units: list[tuple[int, int]] = []
    open_word = False  # the last unit is a word still taking characters
    for i, ((start, end, _), kind) in enumerate(zip(graphemes, kinds, strict=True)):
        joins_word = kind == "word" or (
            kind == "apostrophe"
            and open_word
            and i + 1 < len(kinds)
            and kinds[i + 1] == "word"
        )
        if kind == "space":
            open_word = False
        elif joins_word and open_word:
            units[-1] = (units[-1][0], end)
        else:
            units.append((start, end))
            open_word = kind == "word"
    return units


def _kind(grapheme: str) -> str:
    first = grapheme[0]
    if grapheme.isspace():
        return "space"
    if first.isalnum() or first == "_":
        return "word"
    return "apostrophe" if grapheme in _APOSTROPHES else "symbol"


class _Groups:
    """Union-find over unit indices: units that share a token become one word."""

    def __init__(self, count: int) -> None:
        self.parent = list(range(count))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, lo: int, hi: int) -> None:
        root = self.find(lo)
        for j in range(lo + 1, hi + 1):
            other = self.find(j)
            if other != root:
                self.parent[other] = root


def _covered_units(
    start: int, end: int, units: list[tuple[int, int]], starts: list[int]
) -> tuple[int, int] | None:
    """The range of unit indices a token's span overlaps, or the unit that
    follows (else precedes) a token that covers only whitespace."""
    first = bisect.bisect_right(starts, start) - 1  # the last unit starting at or before start
    if first < 0 or units[first][1] <= start:
        first += 1
    last = bisect.bisect_left(starts, end) - 1  # the last unit starting before end
    if start < end and first <= last:
        return first, last
    if first < len(units):
        return first, first
    return (len(units) - 1, len(units) - 1) if units else None


def word_assignment(
    text: str, encoded: EncodedText
) -> tuple[list[int], list[str], list[list[int] | None]]:
    """For each token the index of its word; each word's text and span.

    Raises:
        BadRequest: the encoding carries no character offsets.
    """
    offsets = encoded.offsets
    if offsets is None or len(offsets) != encoded.length:
        raise BadRequest(
            "this model's tokenizer cannot map tokens to characters (not a fast tokenizer); "
            "use aggregate 'tokens'",
            field="aggregate",
        )
    special = encoded.special or [False] * encoded.length
    units = word_units(text)
    starts = [s for s, _ in units]
    groups = _Groups(len(units))
    covered: list[tuple[int, int] | None] = []
    for (start, end), is_special in zip(offsets, special, strict=True):
        span = None if is_special else _covered_units(start, end, units, starts)
        if span is not None:
            groups.join(*span)
        covered.append(span)

    token_word: list[int] = []
    words: list[str] = []
    spans: list[list[int] | None] = []
    word_of_group: dict[int, int] = {}
    for index, span in enumerate(covered):
        if span is None:  # a token the tokenizer added: a word of its own
            start, end = offsets[index]
            token_word.append(len(words))
            words.append(text[start:end] if start < end else encoded.tokens[index])
            spans.append([start, end] if start < end else None)
            continue
        root = groups.find(span[0])
        if root not in word_of_group:
            word_of_group[root] = len(words)
            words.append("")
            spans.append(None)
        token_word.append(word_of_group[root])
    members: dict[int, list[int]] = {}
    for i in range(len(units)):
        members.setdefault(groups.find(i), []).append(i)
    for root, word in word_of_group.items():
        start, end = units[members[root][0]][0], units[members[root][-1]][1]
        spans[word] = [start, end]
    if encoded.truncated:
        _cut_last_word(offsets, special, token_word, spans)
    for word, span in enumerate(spans):
        if span is not None and not words[word]:
            words[word] = text[span[0] : span[1]]
    return token_word, words, spans


def _cut_last_word(
    offsets: list[tuple[int, int]],
    special: list[bool],
    token_word: list[int],
    spans: list[list[int] | None],
) -> None:
    """A word the cut went through ends where its last kept token ends."""
    kept = [(end, token_word[i]) for i, (_, end) in enumerate(offsets) if not special[i] and end]
    if not kept:
        return
    end, word = max(kept)
    span = spans[word]
    if span is not None and span[0] < end < span[1]:
        span[1] = end


def aggregate_words(
    adapter: ClassifierAdapter, text: str, encoded: EncodedText, scores: torch.Tensor
) -> dict[str, Any]:
    """Merge per-token ``scores`` (..., T) into per-word sums (..., W).

    Returns ``words`` (each the text of its span, or the token for an added
    token), ``word_attributions`` (floats, nested one level per leading axis
    of ``scores``, e.g. one list per class), ``word_spans`` (``[start, end]``
    character offsets into ``text`` or None) and ``token_words`` (the word
    index of each token). Sums are taken in float64.
    """
    if scores.shape[-1] != encoded.length:
        raise ValueError(
            f"scores have {scores.shape[-1]} tokens on the last axis; the encoding has {encoded.length}"
        )
    try:
        token_word, words, spans = word_assignment(text, encoded)
    except BadRequest as exc:
        raise BadRequest(f"model '{adapter.name}': {exc.description}", field=exc.field) from None
    flat = scores.detach().to("cpu", torch.float64).reshape(-1, encoded.length)
    index = torch.tensor(token_word, dtype=torch.long)
    sums = torch.zeros((flat.shape[0], len(words)), dtype=torch.float64)
    sums.index_add_(1, index, flat)
    return {
        "words": words,
        "word_attributions": sums.reshape(*scores.shape[:-1], len(words)).tolist(),
        "word_spans": spans,
        "token_words": token_word,
    }
