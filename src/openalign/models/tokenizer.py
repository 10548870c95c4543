"""WordPiece tokenizer trained on the alt-texts (the paper: 100k vocabulary, 64 tokens max).

Training uses the ``tokenizers`` library; the result is saved as a BERT tokenizer directory that
``transformers.AutoTokenizer`` and ``AlignProcessor`` load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import AutoTokenizer, BertTokenizerFast

MAX_TEXT_LEN = 64


@dataclass(frozen=True)
class TokenizerTrainConfig:
    """``openalign tokenizer train``: where the alt-texts come from, then :func:`train_wordpiece`'s settings."""

    shards: str | None = field(default=None, metadata={
        "one_of": "source", "help": "WebDataset shards, brace pattern (dir/{00000..00009}.tar); reads KEY.txt"})
    parquet: str | None = field(default=None, metadata={
        "one_of": "source", "help": "Parquet table of alt-texts (our pairs table or cc2dataset output)"})
    text_column: str | None = field(default=None, metadata={
        "help": "text column of --parquet (default: text, else cc2dataset's alt)"})
    vocab_size: int = field(default=100_000, metadata={"help": "vocabulary size (paper: 100k)"})
    min_frequency: int = field(default=2, metadata={"help": "minimum count of a merged token"})
    lowercase: bool = field(default=True, metadata={"help": "lower-case and strip accents (BERT uncased)"})
    max_length: int = field(default=MAX_TEXT_LEN, metadata={"help": "model_max_length saved with the tokenizer"})


SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _continuing_pieces(texts: Iterable[str], normalizer, pre_tokenizer) -> list[str]:
    """"##c" for every character c that starts no word, as the trainer would create them, sorted."""
    chars: set[str] = set()
    for text in texts:
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            chars.update(word[1:])
    return [f"##{c}" for c in sorted(chars)]


def train_wordpiece(
    texts: Iterable[str] | Callable[[], Iterable[str]],
    out_dir: str | Path,
    vocab_size: int = 100_000,
    min_frequency: int = 2,
    lowercase: bool = True,
    max_length: int = MAX_TEXT_LEN,
):
    """Train a BERT-style WordPiece vocabulary on ``texts`` and save it to ``out_dir``.

    The same texts give the same vocabulary in every process. ``tokenizers``' trainer alone does not
    (huggingface/tokenizers#1794: it numbers the "##" pieces in hash-map order and breaks ties
    between equally frequent merges by those numbers, so two runs keep different tokens and every
    model trained on them differs). So a first pass over the texts lists the "##" pieces, they enter
    the trainer with fixed ids, and the saved tokenizer keeps them as ordinary vocabulary entries.
    ``texts`` is read twice: give a list or a function returning a fresh iterable (a one-shot
    iterator is held in memory).
    """
    if callable(texts):
        make_texts = texts
    else:
        kept = texts if not isinstance(texts, Iterator) else list(texts)
        make_texts = lambda: kept  # noqa: E731
    normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    pinned = _continuing_pieces(make_texts(), normalizer, pre_tokenizer)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=[*SPECIAL_TOKENS, *pinned])
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    tok.train_from_iterator(make_texts(), trainer=trainer)
    # rebuilt on the trained vocabulary so that only the five BERT tokens are special (the pinned
    # "##" pieces must not be matched in raw text or dropped when decoding)
    tok = Tokenizer(models.WordPiece(vocab=tok.get_vocab(), unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = BertTokenizerFast(tokenizer_object=tok, do_lower_case=lowercase, model_max_length=max_length,
                             unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                             mask_token="[MASK]")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast


def load_tokenizer(path: str | Path, max_length: int = MAX_TEXT_LEN):
    """Load a tokenizer directory (ours, a BERT one, or an ALIGN model folder)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: tokenizer directory not found; train one with `openalign tokenizer train`")
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.model_max_length = max_length
    return tok


def tokenize(tokenizer, texts: list[str], max_length: int = MAX_TEXT_LEN) -> dict:
    """Pad to the longest text in the batch (at most ``max_length``) and return torch tensors."""
    enc = tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
