"""The shapes world's word-level CLIP BPE tokenizer, written from the vocabulary (nothing downloaded).

A BPE vocabulary that only lists whole words still splits "triangle" into pieces: BPE starts from
characters and needs a merge for each step. The merges are found by replaying BPE on every word
and adding, at the lowest priority, a merge of the first two pieces a word still ends up in, until
every word is one token; replaying makes sure that a merge learnt for one word ("a n" for "and")
cannot stop another ("triangle") from reaching its single token.
"""

from __future__ import annotations

from functools import lru_cache

from .world import VOCABULARY

MAX_LENGTH = 24  # tokens per prompt, start and end included: the longest caption takes about 20
_CHARS = [chr(c) for c in range(33, 127)]  # printable ASCII: any other word still tokenizes


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one word: repeatedly merge the adjacent pair of lowest rank."""
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def merges_for(words) -> list[tuple[str, str]]:
    """BPE merges under which each of ``words`` is a single token."""
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    changed = True
    while changed:
        changed = False
        for word in words:
            pieces = _bpe(word, ranks)
            while len(pieces) > 1:
                pair = (pieces[0], pieces[1])
                ranks[pair] = len(merges)
                merges.append(pair)
                changed = True
                pieces = _bpe(word, ranks)
    return merges


def build_tokenizer(words=VOCABULARY, model_max_length: int = MAX_LENGTH):
    """A ``CLIPTokenizer`` on which every word of ``words`` is one token."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in _CHARS:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    merges = merges_for(words)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


@lru_cache(maxsize=1)
def _vocabulary() -> tuple:
    return tuple(sorted(build_tokenizer().get_vocab().items()))


def is_toyworld_tokenizer(tokenizer) -> bool:
    """Whether ``tokenizer`` is the shapes world's (so the model it belongs to draws the shapes world)."""
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if get_vocab is None:
        return False
    vocab = get_vocab()
    return len(vocab) == len(_vocabulary()) and tuple(sorted(vocab.items())) == _vocabulary()  # size first: SD's has 49408
