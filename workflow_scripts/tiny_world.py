"""The embedded default's own model: a byte-level BPE tokenizer (digits split, zephyr-style
chat template) and a small Llama pre-trained briefly on the synthetic corpus."""
from __future__ import annotations

import argparse
import json
import math
import random

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm import tqdm
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from . import synthetic_task
from .io import run_cli
from .models import save_model_folder

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with every digit its own token; BOS added by the post-processor."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        chat_template=CHAT_TEMPLATE, model_max_length=4096, padding_side="right")


def tokenizer_texts(p: dict) -> list[str]:
    """Texts the tokenizer learns merges from: the corpus and problems from a separate seed."""
    corpus = synthetic_task.pretraining_corpus(p["seed"], p["corpus_documents"], p["max_operand"])
    rng = random.Random(p["seed"] + 1)
    problems = [synthetic_task.make_problem(rng, p["max_operand"]) for _ in range(500)]
    return corpus + [q["question"] + "\n" + q["answer"] for q in problems]


def packed_blocks(tokenizer, docs: list[str], block: int) -> torch.Tensor:
    ids: list[int] = []
    for doc in docs:
        ids += tokenizer(doc)["input_ids"] + [tokenizer.eos_token_id]
    n = len(ids) // block
    return torch.tensor(ids[: n * block]).view(n, block)


def pretrain(p: dict, outdir: str, threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(p["seed"])
    tokenizer = train_tokenizer(tokenizer_texts(p), p["vocab_size"])
    arch = p["architecture"]
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=arch["hidden_size"], intermediate_size=arch["intermediate_size"],
        num_hidden_layers=arch["num_layers"], num_attention_heads=arch["num_heads"],
        num_key_value_heads=arch["num_heads"], max_position_embeddings=arch["max_position_embeddings"],
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    n_params = sum(t.numel() for t in model.parameters())
    print(f"tiny llama: {n_params} parameters, vocabulary {len(tokenizer)}")

    train = p["pretrain"]
    docs = synthetic_task.pretraining_corpus(p["seed"], p["corpus_documents"], p["max_operand"])
    blocks = packed_blocks(tokenizer, docs, train["block_size"])
    opt = torch.optim.AdamW(model.parameters(), lr=train["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 10) * 0.5 * (1 + math.cos(math.pi * s / train["steps"])))
    gen = torch.Generator().manual_seed(p["seed"])
    model.train()
    for step in (bar := tqdm(range(train["steps"]), desc="pretrain", mininterval=5)):
        idx = torch.randint(len(blocks), (train["batch_size"],), generator=gen)
        loss = model(input_ids=blocks[idx], labels=blocks[idx]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    print(f"final pre-training loss {loss.item():.4f}")

    def write(tmp):
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "build.json").write_text(json.dumps({"params": p, "n_parameters": n_params}, indent=2))
        AutoTokenizer.from_pretrained(tmp)  # loads back like any hub model, or fails here

    save_model_folder(outdir, write)


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True)
    parser.add_argument("--outdir", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    pretrain(json.loads(args.params), args.outdir, args.threads)


if __name__ == "__main__":
    run_cli(main)
