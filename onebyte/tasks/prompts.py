"""Tokenizing a classification task: prompts cut to fit ``max_length`` without losing the cue, and
label words reduced to the first token each class is scored on."""

from __future__ import annotations

from onebyte.tasks.sources import DataError

__all__ = ["DEFAULT_TEMPLATE", "PromptEncoder", "first_tokens"]

DEFAULT_TEMPLATE = "Review: {text}\nSentiment:"


def _first_token(tokenizer, word: str) -> int:
    """The first token of ``word`` that is not whitespace alone."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    # sentencepiece tokenizers may give a lone "▁" first; skip whitespace-only pieces
    for tid in ids:
        if tokenizer.decode([tid]).strip():
            return int(tid)
    if ids:
        return int(ids[0])
    raise DataError(f"label word {word!r} tokenizes to nothing")


def first_tokens(tokenizer, label_words: list[str]) -> list[int]:
    """Each class is scored on the first token of its word, so those tokens must differ."""
    ids = [_first_token(tokenizer, w) for w in label_words]
    if len(set(ids)) != len(ids):
        pieces = {w: tokenizer.decode([t]) for w, t in zip(label_words, ids)}
        raise DataError(f"label words must start with distinct tokens; first tokens are {pieces}")
    return ids


class PromptEncoder:
    """Encode ``template`` around a text, truncating the text (never the cue) to fit."""

    def __init__(self, tokenizer, template: str, max_length: int) -> None:
        if template.count("{text}") != 1:
            raise DataError(f"the template must contain '{{text}}' exactly once, got {template!r}")
        self.tok = tokenizer
        self.prefix, self.suffix = template.split("{text}")
        self.max_length = max_length
        overhead = len(tokenizer(self.prefix + self.suffix)["input_ids"])
        if overhead + 1 > max_length:
            raise DataError(
                f"the template alone takes {overhead} tokens; max_length={max_length} leaves no room for the text"
            )
        self.overhead = overhead

    def encode_all(self, texts: list[str]) -> list[list[int]]:
        prompts = [self.prefix + t + self.suffix for t in texts]
        out = self.tok(prompts)["input_ids"] if prompts else []
        return [list(ids) if len(ids) <= self.max_length else self._truncate(t) for ids, t in zip(out, texts)]

    def _truncate(self, text: str) -> list[int]:
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=bool(self.tok.is_fast))
        text_ids = enc["input_ids"]
        offsets = enc.get("offset_mapping") if self.tok.is_fast else None
        n = min(len(text_ids), self.max_length - self.overhead)
        for _ in range(64):
            n = max(n, 0)
            if offsets is not None:
                cut = text[: offsets[n - 1][1]] if n > 0 else ""
            else:
                cut = self.tok.decode(text_ids[:n], skip_special_tokens=True)
            ids = self.tok(self.prefix + cut.rstrip() + self.suffix)["input_ids"]
            if len(ids) <= self.max_length:
                return list(ids)
            if n == 0:
                break
            n -= max(1, len(ids) - self.max_length)
        raise DataError(f"could not fit a prompt into max_length={self.max_length}")  # pragma: no cover
