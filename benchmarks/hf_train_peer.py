"""The PyTorch peer of the pretraining benchmarks: a Hugging Face BertForMaskedLM training step on the GPU.

    python3 benchmarks/hf_train_peer.py [--batch 128] [--seq_len 128] [--steps 30] [--json out.json]

The crammedBERT-3072 shape (16 layers, hidden 768, 12 heads, feedforward 3072, vocabulary 32768) as a user
would train it in PyTorch: SDPA attention, no dropout, bf16 autocast over float32 weights, fused AdamW
(lr 1e-3, betas (0.9, 0.98), eps 1e-12, weight decay 0.01), the gradient clipped to norm 0.5, labels on
25% of the positions (the rest -100) with the full-vocabulary logits transformers computes. Timed with CUDA
events over back-to-back steps after warm-up, eager and with ``torch.compile``; prints one JSON line per
mode. torch and transformers exist on the GPU machine only and are no dependency of this package.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import transformers
from hf_shape import BERT_SHAPE


def step_ms(model, optimizer, batch: dict, steps: int, repeats: int = 3) -> float:
    """Median over `repeats` of the mean ms per step of `steps` back-to-back training steps."""

    def one_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):  # warm-up (and compilation)
        one_step()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            one_step()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop) / steps)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="steps per timed loop")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    cfg = transformers.BertConfig(
        **BERT_SHAPE,
        max_position_embeddings=args.seq_len,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    generator = torch.Generator("cuda").manual_seed(0)
    ids = torch.randint(8, cfg.vocab_size, (args.batch, args.seq_len), device="cuda", generator=generator)
    labelled = torch.rand(ids.shape, device="cuda", generator=generator) < 0.25  # [B, S]
    batch = {"input_ids": ids, "labels": torch.where(labelled, ids, -100)}
    rows = []
    for compiled in (False, True):
        model = transformers.BertForMaskedLM(cfg).cuda().train()
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-12, weight_decay=0.01, fused=True
        )
        ms = step_ms(torch.compile(model) if compiled else model, optimizer, batch, args.steps)
        tokens = args.batch * args.seq_len
        rows.append(
            {
                "model": "hf-bert-mlm" + ("-compiled" if compiled else ""),
                "step_ms": ms,
                "tokens_per_s": tokens / ms * 1e3,
                "device": torch.cuda.get_device_name(),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
