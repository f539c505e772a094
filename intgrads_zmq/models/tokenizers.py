"""Tokenizers from a local folder, with no hub access.

``tokenizer.json`` wins when present (through ``AutoTokenizer``). Otherwise
the legacy single-file vocabularies the original server's models shipped
with are built directly, because ``AutoTokenizer`` in transformers 5 fails on
them (or, for a folder with a ``tokenizer_config.json`` and ``vocab.txt``,
silently yields all-[UNK]).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from tokenizers import AddedToken
from transformers import AutoTokenizer, BertTokenizer, PreTrainedTokenizerBase, XLNetTokenizer

from intgrads_zmq.errors import ModelLoadError

from .sentencepiece import CONTROL, USER_DEFINED, read_sentencepiece
from .state_dicts import PathLike, first_line

# A few common words: a working English tokenizer maps at least one of them to
# a real token. transformers 5 silently turns every token into the unknown
# token when a vocabulary is passed the old way, and this catches that.
_TOKENIZER_PROBE = "the a and of"


def xlnet_tokenizer_from_spiece(model_file: Path, settings: Mapping[str, Any]) -> XLNetTokenizer:
    """XLNet's fast tokenizer from ``spiece.model``, as transformers' converter builds it.

    Control pieces become special tokens and user-defined pieces added
    tokens, so neither is split by the normaliser.
    """
    model = read_sentencepiece(model_file)
    if not model.pieces:
        raise ModelLoadError(f"{model_file} holds no SentencePiece vocabulary")
    added = [
        AddedToken(p.text, normalized=False, special=p.kind == CONTROL)
        for p in model.pieces
        if p.kind in (CONTROL, USER_DEFINED)
    ]
    return XLNetTokenizer(
        vocab=[(p.text, p.score) for p in model.pieces],
        unk_id=model.unk_id,
        do_lower_case=bool(settings.get("do_lower_case", False)),
        keep_accents=bool(settings.get("keep_accents", False)),
        _spm_precompiled_charsmap=model.precompiled_charsmap,
        additional_special_tokens=added or None,
    )


def _check_tokenizer(
    tokenizer: PreTrainedTokenizerBase, directory: Path, vocab_size: int | None
) -> None:
    """Refuse tokenizers that cannot serve the model: too large, or all-unknown."""
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ModelLoadError(
            f"tokenizer in {directory} has {len(tokenizer)} tokens but the model's embedding has only "
            f"{vocab_size} rows; is it the tokenizer of another model?"
        )
    unk = tokenizer.unk_token_id
    ids = tokenizer(_TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]
    if unk is not None and all(i == unk for i in ids):
        raise ModelLoadError(
            f"tokenizer in {directory} maps every word of {_TOKENIZER_PROBE!r} to {tokenizer.unk_token}"
        )


def _settings(folder: Path) -> dict[str, Any]:
    """``tokenizer_config.json`` if the folder has one (casing, accents)."""
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {first_line(exc)}") from None


def _build(folder: Path, family: str, settings: Mapping[str, Any]) -> PreTrainedTokenizerBase:
    legacy = folder / ("vocab.txt" if family == "bert" else "spiece.model")
    if (folder / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if not legacy.is_file():
        raise ModelLoadError(
            f"tokenizer directory {folder} holds neither tokenizer.json nor {legacy.name}"
        )
    if family == "bert":  # uncased WordPiece unless the config says otherwise
        return BertTokenizer(vocab=str(legacy), do_lower_case=bool(settings.get("do_lower_case", True)))
    return xlnet_tokenizer_from_spiece(legacy, settings)


def load_tokenizer(
    directory: PathLike,
    *,
    family: Literal["bert", "xlnet"],
    vocab_size: int | None = None,
) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local folder: ``tokenizer.json``, else ``vocab.txt``
    (BERT) or ``spiece.model`` (XLNet).

    Raises:
        ModelLoadError: the folder is missing, holds no usable tokenizer, or
            the tokenizer does not fit a model with ``vocab_size`` rows.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise ModelLoadError(f"tokenizer directory {folder} does not exist")
    settings = _settings(folder)
    try:
        tokenizer = _build(folder, family, settings)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for a bad folder
        raise ModelLoadError(f"tokenizer in {folder} could not be loaded: {first_line(exc)}") from None
    _check_tokenizer(tokenizer, folder, vocab_size)
    return tokenizer
