"""DPO-BMC token-difference masks (YJiangcm/BMC @ 958d49e, scripts/dpo_bmc_trainer.py).

`difflib.SequenceMatcher(None, rejected_ids, chosen_ids)` over the full padded rows of a batch
(prompt + response + padding, as upstream); replace/delete mark rejected tokens, replace/insert
mark chosen tokens; stopword tokens are never marked. The masks are then shifted by one to
line up with the labels.
"""
from __future__ import annotations

import difflib

import torch

# NLTK's English stopword list (nltk_data `stopwords` corpus, 179 words), embedded because
# these machines cannot download the corpus; upstream adds the capitalised form of each word
# longer than one letter.
NLTK_ENGLISH_STOPWORDS = """
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves
he him his himself she she's her hers herself it it's its itself they them their theirs themselves
what which who whom this that that'll these those am is are was were be been being have has had
having do does did doing a an the and but if or because as until while of at by for with about
against between into through during before after above below to from up down in out on off over
under again further then once here there when where why how all any both each few more most other
some such no nor not only own same so than too very s t can will just don don't should should've
now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn
hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn
shouldn't wasn wasn't weren weren't won won't wouldn wouldn't
""".split()


def stopword_ids(tokenizer) -> set[int]:
    """First token id of each stopword (and its capitalised form) that the tokenizer keeps as one token."""
    words = set(NLTK_ENGLISH_STOPWORDS)
    words.update(w.capitalize() for w in list(words) if len(w) > 1)
    ids = set()
    for word in sorted(words):
        tokens = tokenizer.tokenize(word)
        if len(tokens) == 1:
            ids.add(tokenizer.convert_tokens_to_ids(tokens)[0])
    return ids


def find_modifications(original: list[int], corrected: list[int], stopwords: set[int]) -> tuple[list[int], list[int]]:
    """0/1 marks of the tokens of `original` (rejected) and `corrected` (chosen) that the edit changed."""
    original_marks, corrected_marks = [0] * len(original), [0] * len(corrected)
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, original, corrected).get_opcodes():
        if tag in ("replace", "delete"):
            for i in range(i1, i2):
                original_marks[i] = int(original[i] not in stopwords)
        if tag in ("replace", "insert"):
            for j in range(j1, j2):
                corrected_marks[j] = int(corrected[j] not in stopwords)
    return original_marks, corrected_marks


def edit_masks(input_ids: torch.Tensor, stopwords: set[int]) -> torch.Tensor:
    """Masks [B, 2, T] aligned with the labels, from padded rows [B, K, T + 1] (column 0 chosen, 1 rejected)."""
    rows = input_ids[:, :2].cpu().tolist()
    masks = []
    for chosen, rejected in rows:
        rejected_marks, chosen_marks = find_modifications(rejected, chosen, stopwords)
        masks.append([chosen_marks[1:], rejected_marks[1:]])
    return torch.tensor(masks, dtype=torch.float32, device=input_ids.device)
