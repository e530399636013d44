"""Pure stages, no model: utils/engine/batching.py (plan_batches, window_spans) and utils/engine/pooling.py (mean over
residue rows, padding independence, merge_windows). Property tests (hypothesis) over lengths, budgets and windows."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.engine.batching import MAX_PADDING, padded_tokens, plan_batches, window_spans
from utils.engine.pooling import mean_over_residues, merge_windows, residue_mask, residue_rows

FAST = settings(max_examples=200, deadline=None)

lengths_st = st.lists(st.integers(min_value=1, max_value=3000), min_size=0, max_size=120)
budget_st = st.integers(min_value=16, max_value=20000)
items_st = st.integers(min_value=1, max_value=64)
special_st = st.integers(min_value=0, max_value=2)


# -- plan_batches -----------------------------------------------------------------------------------------------------
@FAST
@given(lengths_st, budget_st, items_st, special_st)
def test_plan_batches_every_index_exactly_once(lengths, budget, max_items, special):
    batches = plan_batches(lengths, budget, max_items, special)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(batch for batch in batches)  # no empty batch


@FAST
@given(lengths_st, budget_st, items_st, special_st)
def test_plan_batches_respects_budget_and_max_items(lengths, budget, max_items, special):
    for batch in plan_batches(lengths, budget, max_items, special):
        assert len(batch) <= max_items
        batch_lengths = [lengths[i] for i in batch]
        if len(batch) > 1:
            assert padded_tokens(batch_lengths, special) <= budget
        else:  # only a protein that alone exceeds the budget may stand over it, and then it stands alone
            assert padded_tokens(batch_lengths, special) <= budget or lengths[batch[0]] + special > budget


@FAST
@given(lengths_st, budget_st, items_st, special_st)
def test_plan_batches_longest_first_ties_in_input_order(lengths, budget, max_items, special):
    batches = plan_batches(lengths, budget, max_items, special)
    flat = [i for batch in batches for i in batch]
    assert flat == sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    for batch in batches:
        assert lengths[batch[0]] == max(lengths[i] for i in batch)


@FAST
@given(lengths_st, budget_st, items_st, special_st)
def test_plan_batches_closes_a_batch_only_when_the_next_protein_does_not_fit(lengths, budget, max_items, special):
    batches = plan_batches(lengths, budget, max_items, special)
    for batch, following in zip(batches, batches[1:], strict=False):
        full = len(batch) >= max_items
        over = (len(batch) + 1) * (lengths[batch[0]] + special) > budget
        padded = lengths[batch[0]] + special > (1 + MAX_PADDING) * (lengths[following[0]] + special)
        assert full or over or padded, "a batch was closed although the next protein fitted"


@FAST
@given(lengths_st, budget_st, items_st, special_st, st.integers(1, 10**7))
def test_plan_batches_respects_the_square_budget_and_the_padding_cap(lengths, budget, max_items, special, square):
    for batch in plan_batches(lengths, budget, max_items, special, max_square_tokens=square):
        longest = lengths[batch[0]] + special
        assert len(batch) == 1 or len(batch) * longest * longest <= square
        assert all(longest <= (1 + MAX_PADDING) * (lengths[i] + special) for i in batch)


@FAST
@given(lengths_st, budget_st, items_st, special_st)
def test_plan_batches_is_longest_first_with_ties_in_input_order(lengths, budget, max_items, special):
    """The plan depends on the lengths and their order only: a rerun (resume) cuts the same batches and chunks."""
    flat = [i for batch in plan_batches(lengths, budget, max_items, special) for i in batch]
    assert flat == sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


def test_plan_batches_examples():
    assert plan_batches([], 100, 4, 1) == []
    # 10 + 1 special = 11 tokens a row: 4 rows = 44 ≤ 50, a fifth would be 55
    assert plan_batches([10] * 6, 50, 8, 1) == [[0, 1, 2, 3], [4, 5]]
    assert plan_batches([10] * 6, 44, 8, 1) == [[0, 1, 2, 3], [4, 5]]  # exactly at the budget still fits
    assert plan_batches([10] * 6, 1000, 4, 1) == [[0, 1, 2, 3], [4, 5]]  # max_items
    # the 500-residue protein exceeds the budget alone and gets a batch of its own; the rest fill from longest
    assert plan_batches([5, 500, 20, 20], 64, 8, 2) == [[1], [2, 3], [0]]


# -- window_spans -----------------------------------------------------------------------------------------------------
@st.composite
def windows_st(draw):
    window = draw(st.integers(min_value=2, max_value=600))
    overlap = draw(st.integers(min_value=0, max_value=window - 1))
    n = draw(st.integers(min_value=1, max_value=5000))
    return n, window, overlap


@FAST
@given(windows_st())
def test_window_spans_cover_exactly_with_stated_overlaps(case):
    n, window, overlap = case
    spans = window_spans(n, window, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == n
    covered = torch.zeros(n, dtype=torch.int64)
    for start, end in spans:
        assert 0 <= start < end <= n
        covered[start:end] += 1
    assert bool((covered >= 1).all())  # every residue in at least one window, nothing outside [0, n)
    if n <= window:
        assert spans == [(0, n)]
        return
    assert all(end - start == window for start, end in spans)  # every window full length
    starts = [start for start, _ in spans]
    assert starts == sorted(set(starts))
    # consecutive windows overlap by exactly `overlap`, except the last, placed to end at n, which overlaps more
    for (_, a_end), (b, _) in zip(spans[:-2], spans[1:-1], strict=True):
        assert a_end - b == overlap
    assert spans[-2][1] - spans[-1][0] >= overlap


def test_window_spans_examples():
    assert window_spans(50, 64, 16) == [(0, 50)]
    assert window_spans(64, 64, 16) == [(0, 64)]
    assert window_spans(200, 64, 16) == [(0, 64), (48, 112), (96, 160), (136, 200)]
    assert window_spans(10, 4, 0) == [(0, 4), (4, 8), (6, 10)]


# -- pooling ----------------------------------------------------------------------------------------------------------
def _hidden_with_poisoned_specials(residues: list[torch.Tensor], offset: int, total: int) -> torch.Tensor:
    """[B, total, D]: each protein's residue rows at [offset, offset + L); every other row a huge value, so any
    special or padding row that leaks into a mean shows."""
    dim = residues[0].shape[1]
    hidden = torch.full((len(residues), total, dim), 1e6)
    for b, rows in enumerate(residues):
        hidden[b, offset : offset + rows.shape[0]] = rows
    return hidden


@FAST
@given(
    st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=6),
    st.sampled_from([0, 1]),
    st.integers(min_value=0, max_value=7),
    st.integers(min_value=0, max_value=2**31 - 1),
)
def test_mean_is_over_exactly_the_residue_rows_whatever_the_padding(lengths, offset, extra_padding, seed):
    generator = torch.Generator().manual_seed(seed)
    residues = [torch.randn(n, 8, generator=generator) for n in lengths]
    total = offset + max(lengths) + 1 + extra_padding  # prefix, residues, end token, padding
    hidden = _hidden_with_poisoned_specials(residues, offset, total)
    pooled = mean_over_residues(hidden, torch.tensor(lengths), offset)
    assert pooled.dtype == torch.float32 and pooled.shape == (len(lengths), 8)
    for b, rows in enumerate(residues):
        torch.testing.assert_close(pooled[b], rows.mean(dim=0), rtol=1e-5, atol=1e-5)
        # the same protein alone, padded to its own length only: the same vector
        alone = _hidden_with_poisoned_specials([rows], offset, offset + rows.shape[0] + 1)
        torch.testing.assert_close(mean_over_residues(alone, torch.tensor([rows.shape[0]]), offset)[0], pooled[b])


def test_mean_of_half_precision_sums_in_float32():
    hidden = torch.full((1, 3000, 4), 60000.0, dtype=torch.float16)  # a float16 sum would overflow to inf
    pooled = mean_over_residues(hidden, torch.tensor([2999]), 0)
    assert torch.isfinite(pooled).all() and torch.allclose(pooled, torch.full((1, 4), 60000.0))


def test_residue_mask_and_rows():
    mask = residue_mask(torch.tensor([2, 4]), 1, 6)
    assert mask.tolist() == [
        [False, True, True, False, False, False],
        [False, True, True, True, True, False],
    ]
    hidden = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3)
    rows = residue_rows(hidden, [2, 4], 1)
    assert [r.shape for r in rows] == [(2, 3), (4, 3)]
    assert torch.equal(rows[1], hidden[1, 1:5])


@FAST
@given(windows_st(), st.integers(min_value=0, max_value=2**31 - 1))
def test_merge_windows_of_consistent_rows_gives_the_rows_back(case, seed):
    n, window, overlap = case
    full = torch.randn(n, 5, generator=torch.Generator().manual_seed(seed))
    spans = window_spans(n, window, overlap)
    merged = merge_windows([full[start:end].half() for start, end in spans], spans, n)
    assert merged.dtype == torch.float32 and merged.shape == (n, 5)
    torch.testing.assert_close(merged, full.half().float())


def test_merge_windows_averages_overlapping_residues():
    spans = window_spans(10, 4, 1)  # (0,4) (3,7) (6,10)
    rows = [torch.full((4, 2), float(k)) for k in range(len(spans))]  # window k says k for each of its residues
    merged = merge_windows(rows, spans, 10)[:, 0].tolist()
    assert merged == [0, 0, 0, 0.5, 1, 1, 1.5, 2, 2, 2]
