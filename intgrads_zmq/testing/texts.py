"""Long, review-like benchmark inputs built from text that is already installed.

The original server's time trial ran 1,855 IMDB reviews of 512 tokens. IMDB
cannot be downloaded here, and random word salad would tokenise differently
from real prose (more unknown words and sub-word splits), so the inputs are
assembled from English that installs offline:

* sentences of the project's own short movie reviews (``tests/data``),
* review sentences made from small hand-written phrase lists, so that
  examples do not repeat the same few dozen sentences,
* the odd digression taken from prose that ships with Python itself: the
  Zen of Python (the ``this`` module) and the plain-English sentences of a
  few standard-library docstrings (IMDB reviews wander off-topic too).

Every choice comes from ``random.Random(seed)``, and every source is read in
a fixed order, so a seed gives the same texts on any machine with the same
Python version. Texts are built longer than asked (in words, each of which is
at least one token), so the tokenizer's ``max_length`` truncation makes every
example exactly ``length`` tokens, as in the original trial.
"""

from __future__ import annotations

import codecs
import contextlib
import importlib
import io
import json
import random
import re
from functools import lru_cache
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[2] / "tests" / "data"
REVIEW_FILES = ("movie_reviews_tune.jsonl", "movie_reviews_test.jsonl")
# Standard-library modules whose docstrings hold plain English sentences.
PROSE_MODULES = ("textwrap", "difflib", "heapq", "random", "statistics", "calendar",
                 "fractions", "shlex", "sched", "pprint")
DIGRESSION_SHARE = 0.08  # fraction of sentences that are not about the film
TEMPLATE_SHARE = 0.45  # fraction of review sentences made from the phrase lists
WORD_MARGIN = 1.15  # build this many more words than tokens wanted

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
_PLAIN = re.compile(r"[A-Za-z][A-Za-z ,;:'\-]*[.!?]")

SUBJECTS = (
    "The acting", "The script", "The soundtrack", "The cinematography", "The pacing",
    "The ending", "The lead actress", "The villain", "The supporting cast", "The dialogue",
    "The editing", "The final act", "The first half hour", "The special effects",
    "The costume design", "The humour", "The romance subplot", "The director's vision",
)
VERDICTS = (
    "was superb", "felt flat", "was painfully slow", "was a genuine surprise",
    "never quite worked", "was better than I expected", "dragged on far too long",
    "kept me on the edge of my seat", "was clumsy and predictable", "was quietly moving",
    "made no sense at all", "was the best thing about it", "was simply forgettable",
    "carried the whole film", "felt rushed", "was beautifully done",
)
CONNECTIVES = ("", "", "", "Honestly, ", "To be fair, ", "On the other hand, ", "Sadly, ",
               "Still, ", "What is more, ", "In the end, ", "Oddly enough, ")
ASIDES = (
    "I watched it with my family on a rainy Sunday.",
    "My friends recommended it, so my expectations were high.",
    "I saw it in a half-empty cinema late at night.",
    "It is the kind of film you either love or hate.",
    "I have seen the original twice and the remake once.",
    "The trailer gave away far too much of the story.",
    "I would not pay full price for it again.",
    "It reminded me of the films I grew up with.",
    "Give it a chance if you like slow character studies.",
    "I cannot say I will remember much of it next year.",
)


@lru_cache(maxsize=1)
def review_sentences() -> tuple[str, ...]:
    """Sentences of the project's movie reviews, in file order."""
    sentences: list[str] = []
    for name in REVIEW_FILES:
        path = DATA_DIR / name
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                sentences.extend(_split(json.loads(line)["text"]))
    return tuple(sentences)


@lru_cache(maxsize=1)
def prose_sentences() -> tuple[str, ...]:
    """Plain-English sentences from the Zen of Python and stdlib docstrings."""
    with contextlib.redirect_stdout(io.StringIO()):  # importing ``this`` prints the Zen
        this = importlib.import_module("this")
    zen = codecs.decode(this.s, "rot13")
    sentences = [line.strip() for line in zen.splitlines()[2:] if line.strip()]
    for name in PROSE_MODULES:
        module = importlib.import_module(name)
        docs = [module.__doc__ or ""]
        for attr in sorted(vars(module)):
            value = getattr(module, attr)
            if not attr.startswith("_") and getattr(value, "__module__", None) == name:
                docs.append(getattr(value, "__doc__", None) or "")
        for doc in docs:
            sentences.extend(s for s in _split(doc) if _is_plain(s))
    return tuple(dict.fromkeys(sentences))  # drop repeats, keep order


def _split(text: str) -> list[str]:
    flat = " ".join(text.split())
    return [s.strip() for s in _SENTENCE.split(flat) if s.strip()]


def _is_plain(sentence: str) -> bool:
    """A sentence of ordinary words: no code, no markup, a sensible length."""
    words = sentence.split()
    return 6 <= len(words) <= 30 and bool(_PLAIN.fullmatch(sentence)) and sentence[0].isupper()


def _template_sentence(rng: random.Random) -> str:
    connective = rng.choice(CONNECTIVES)
    subject = rng.choice(SUBJECTS)
    if connective:
        subject = subject[0].lower() + subject[1:]
    return f"{connective}{subject} {rng.choice(VERDICTS)}."


def _next_sentence(rng: random.Random, reviews: tuple[str, ...], prose: tuple[str, ...]) -> str:
    draw = rng.random()
    if prose and draw < DIGRESSION_SHARE:
        return rng.choice(prose)
    if draw < DIGRESSION_SHARE + 0.05:
        return rng.choice(ASIDES)
    if not reviews or rng.random() < TEMPLATE_SHARE:
        return _template_sentence(rng)
    return rng.choice(reviews)


def review_text(rng: random.Random, words: int) -> str:
    """One long review of at least ``words`` words, on one line (as IMDB files hold them)."""
    reviews, prose = review_sentences(), prose_sentences()
    sentences: list[str] = []
    count = 0
    while count < words:
        sentence = _next_sentence(rng, reviews, prose)
        if sentences and sentence == sentences[-1]:
            continue
        sentences.append(sentence)
        count += len(sentence.split())
    return " ".join(sentences)


def review_texts(count: int, *, length: int, seed: int = 0) -> list[str]:
    """``count`` different reviews, each long enough for ``length`` tokens."""
    rng = random.Random(seed)
    words = int(length * WORD_MARGIN) + 8
    return [review_text(rng, words) for _ in range(count)]


def read_texts(path: str | Path, count: int) -> list[str]:
    """The first ``count`` non-empty lines of a file of one review per line.

    A file with fewer lines is cycled (the time trial's header says how many
    distinct texts it ran).
    """
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"{path} holds no texts")
    return [lines[i % len(lines)] for i in range(count)]
