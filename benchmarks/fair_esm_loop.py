"""A fair-esm-style ESM loop, the second peer of benchmarks/throughput.py for ESM2 models.

fair-esm's own package is not installed (nor reachable), so its `extract.py` is emulated on transformers' EsmModel:
- batching as `esm.data.FastaBatchedDataset.get_batch_indices(toks_per_batch=4096, extra_toks_per_seq=1)`: proteins
  sorted by their full length, a batch closed when (its longest + 1) × (its proteins + 1) would pass 4,096 tokens;
  lengths before truncation decide the batches, as in fair-esm;
- truncation to 1,022 residues (`truncation_seq_length=1022`), `<cls>` and `<eos>` added, padded to the batch's
  longest (the BatchConverter);
- the mean over the residue rows 1 … L (extract.py's `mean` representation; no special token in it).
Differences, each in the peer's favour: fp16 on GPU (extract.py runs fp32), transformers' `sdpa` attention (fair-esm
has its own attention module), and the mean taken on the device with one host copy per batch (extract.py copies the
whole batch's hidden states to the host first). fp32 on CPU.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from benchmarks.seed_loop import SeedResult

FAIR_ESM_TOKENS_PER_BATCH = 4096
FAIR_ESM_TRUNCATION = 1022  # residues; extract.py's default truncation_seq_length


def fair_esm_batches(
    lengths: Sequence[int], toks_per_batch: int = FAIR_ESM_TOKENS_PER_BATCH, extra_toks_per_seq: int = 1
) -> list[list[int]]:
    """fair-esm's get_batch_indices over `lengths`: indices by ascending (length, index), batches whose
    (longest + extra) × count stays within toks_per_batch; a protein longer than that is a batch of its own."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for size, index in sorted((n, i) for i, n in enumerate(lengths)):
        size += extra_toks_per_seq
        if current and max(size, longest) * (len(current) + 1) > toks_per_batch:
            batches.append(current)
            current, longest = [], 0
        longest = max(longest, size)
        current.append(index)
    if current:
        batches.append(current)
    return batches


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def run_fair_esm_loop(tokenizer: Any, model: torch.nn.Module, sequences: list[str], device: str) -> SeedResult:
    """Every protein (duplicates included) in fair-esm's batches, truncated to 1,022 residues; the model loaded."""
    result = SeedResult()
    batches = fair_esm_batches([len(s) for s in sequences])
    _sync(device)
    started = time.perf_counter()
    for batch in batches:
        texts = [sequences[i][:FAIR_ESM_TRUNCATION] for i in batch]
        tokens = tokenizer(texts, padding="longest", return_tensors="pt")
        mask = tokens["attention_mask"]
        result.real_tokens += int(mask.sum())
        result.padded_tokens += mask.numel()
        kept = torch.tensor([len(t) for t in texts])
        result.residues_seen += int(kept.sum())
        result.truncated += [i for i in batch if len(sequences[i]) > FAIR_ESM_TRUNCATION]
        with torch.no_grad():
            ids = tokens["input_ids"].to(device, non_blocking=True)
            hidden = model(input_ids=ids, attention_mask=mask.to(device, non_blocking=True)).last_hidden_state
            # Residue rows 1 … L of each protein: past <cls>, before <eos> and the padding
            position = torch.arange(hidden.shape[1], device=hidden.device)[None, :]
            residue = (position >= 1) & (position <= kept.to(hidden.device)[:, None])
            weights = residue.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1, dtype=torch.float32) / kept.to(hidden.device)[:, None]
        vectors = pooled.cpu()
        for row, i in enumerate(batch):
            result.embeddings[i] = vectors[row]
    _sync(device)
    result.seconds = time.perf_counter() - started
    return result
