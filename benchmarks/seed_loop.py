"""The seed project's embedding loop, rewritten from its description, as the baseline for benchmarks/throughput.py.

Kept on purpose, because the baseline's *speed* is what is measured (not its correctness):
- proteins sorted by length, fixed batches of 32, the tokenizer pads each batch to its longest member;
- silent truncation to 1024 tokens;
- fp16 on GPU through `from_pretrained(dtype=float16)`, so T5's `wo` layers stay fp32 (`_keep_in_fp32_modules`)
  and a third of the encoder's matmuls run in fp32; fp32 on CPU;
- eager attention (the transformers default of the seed's era);
- pooling = mean over every non-pad token, the end token `</s>` included (the seed's bug);
- `torch.cuda.empty_cache()` after every batch;
- out of memory skips the batch (the seed `continue`d; here the skipped proteins are counted, not misplaced).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

SEED_BATCH_SIZE = 32
SEED_MAX_TOKENS = 1024


@dataclass
class SeedResult:
    embeddings: dict[int, torch.Tensor] = field(default_factory=dict)  # input index → vector (float32, CPU)
    seconds: float = 0.0  # the loop alone (tokenize + forward + pool + copy), model already loaded
    real_tokens: int = 0  # tokens the model saw, after truncation, without padding
    padded_tokens: int = 0  # batch rows × longest row, summed over batches
    residues_seen: int = 0  # residues left after truncation
    truncated: list[int] = field(default_factory=list)  # input indices cut to SEED_MAX_TOKENS
    skipped_oom: list[int] = field(default_factory=list)  # input indices lost to an out-of-memory batch


def load_seed_model(name: str, model_class: str, device: str, attention: str = "eager") -> tuple[Any, torch.nn.Module]:
    """As the seed did: half precision through from_pretrained on GPU (T5's `wo` stays fp32), fp32 on CPU; eager
    attention as in the seed's days, or `attention="sdpa"`, transformers' default today."""
    import transformers

    dtype = torch.float32 if device == "cpu" else torch.float16
    tokenizer = transformers.AutoTokenizer.from_pretrained(name)
    options = {"add_pooling_layer": False} if model_class == "EsmModel" else {}
    model_type = getattr(transformers, model_class)
    model = model_type.from_pretrained(name, dtype=dtype, attn_implementation=attention, **options)
    return tokenizer, model.to(device).eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def run_seed_loop(
    tokenizer: Any,
    model: torch.nn.Module,
    texts: list[str],
    residue_counts: list[int],
    device: str,
    batch_size: int = SEED_BATCH_SIZE,
    max_tokens: int = SEED_MAX_TOKENS,
    special_tokens: int = 1,
) -> SeedResult:
    """texts: model text per protein (the seed's preparation: ProtT5 spaced residues, ESM plain); no de-duplication."""
    result = SeedResult()
    order = sorted(range(len(texts)), key=lambda i: residue_counts[i])
    _sync(device)
    started = time.perf_counter()
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        tokens = tokenizer(
            [texts[i] for i in batch], padding="longest", truncation=True, max_length=max_tokens, return_tensors="pt"
        )
        mask = tokens["attention_mask"]
        result.real_tokens += int(mask.sum())
        result.padded_tokens += mask.numel()
        for i in batch:
            if residue_counts[i] + special_tokens > max_tokens:
                result.truncated.append(i)
            result.residues_seen += min(residue_counts[i], max_tokens - special_tokens)
        try:
            with torch.no_grad():
                output = model(input_ids=tokens["input_ids"].to(device), attention_mask=mask.to(device))
                hidden = output.last_hidden_state
                weights = mask.to(device).unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
            vectors = pooled.float().cpu()
        except torch.OutOfMemoryError:
            result.skipped_oom += batch
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            continue
        for row, i in enumerate(batch):
            result.embeddings[i] = vectors[row]
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    _sync(device)
    result.seconds = time.perf_counter() - started
    return result


def main(argv: list[str] | None = None) -> int:
    """The seed's whole job as one process: read a FASTA, load the model, loop, save {ids, embeddings}."""
    import argparse

    parser = argparse.ArgumentParser(description="the seed's embedding loop as a script (benchmark baseline)")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--fasta", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--attention", default="sdpa", choices=("sdpa", "eager"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    ids, sequences = [], []
    for block in open(args.fasta).read().split(">")[1:]:
        header, *lines = block.splitlines()
        ids.append(header.split()[0])
        sequences.append("".join(lines))
    import transformers

    model_type = transformers.AutoConfig.from_pretrained(args.checkpoint).model_type
    t5 = model_type in ("t5", "mt5")
    tokenizer, model = load_seed_model(
        args.checkpoint, "T5EncoderModel" if t5 else "EsmModel", args.device, args.attention
    )
    texts = [" ".join(s) for s in sequences] if t5 else sequences
    lengths = [len(s) for s in sequences]
    result = run_seed_loop(tokenizer, model, texts, lengths, args.device, special_tokens=1 if t5 else 2)
    embeddings = torch.stack([result.embeddings[i] for i in range(len(sequences))]).half()
    torch.save({"ids": ids, "embeddings": embeddings}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
