"""Array shards: the digest → shard rule, the --shard argument, the lock shards share; the end-to-end check that
three shards and a merge equal one local run is in test_cluster_cli.py."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from utils.errors import UserError
from utils.files import OutputLock
from utils.running.shards import Shard, missing_report, parse_shard, shard_of
from utils.running.store import sequence_digest


@pytest.mark.parametrize(("text", "shard"), [("0/3", Shard(0, 3)), ("2/3", Shard(2, 3)), (" 0 / 1 ", Shard(0, 1))])
def test_parse_shard(text, shard):
    assert parse_shard(text) == shard


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3/3", "must be 0 to 2 for 3"),
        ("1/0", "N, the number of shards, must be at least 1"),
        ("0/0", "N, the number of shards, must be at least 1"),  # not "must be 0 to 0 for 0 shard(s)"
        ("0/-2", "N, the number of shards, must be at least 1"),
        ("a/3", "give I/N"),
        ("1", "give I/N"),
        ("-1/3", "the shard index must be 0 to 2 for 3"),
    ],
)
def test_parse_shard_refuses(text, message):
    with pytest.raises(UserError, match=message):
        parse_shard(text)


@given(
    st.lists(st.text(alphabet="ACDEFGHIKLMNPQRSTVWY", min_size=1, max_size=30), min_size=1, max_size=40),
    st.integers(1, 9),
)
def test_every_sequence_in_exactly_one_shard_whatever_the_order(sequences, count):
    digests = [sequence_digest(s) for s in sequences]
    owners = {d: [i for i in range(count) if Shard(i, count).holds(d)] for d in digests}
    assert all(len(o) == 1 for o in owners.values())
    assert all(owners[d] == [shard_of(d, count)] for d in digests)


def test_shards_are_balanced():
    counts = [0] * 4
    for i in range(4000):
        counts[shard_of(hashlib.sha1(str(i).encode()).hexdigest(), 4)] += 1
    assert min(counts) > 900, counts


def test_missing_report_counts_and_shows_examples():
    line = missing_report((f"p{i}" for i in range(9)), 9, "model t5, split train")
    assert line.startswith("model t5, split train: 9 protein(s) have no embedding yet (e.g. 'p0', 'p1', 'p2', 'p3'")
    assert "…" in line and "--merge" in line and "\n" not in line


def test_shards_share_the_lock_and_exclude_a_whole_run(tmp_path):
    with OutputLock(tmp_path, shared=True), OutputLock(tmp_path, shared=True):
        with pytest.raises(UserError, match="shard runs"):
            OutputLock(tmp_path).__enter__()
    with OutputLock(tmp_path):
        with pytest.raises(UserError, match="another run"):
            OutputLock(tmp_path, shared=True).__enter__()
    with OutputLock(tmp_path):  # released: the next run gets it
        pass
