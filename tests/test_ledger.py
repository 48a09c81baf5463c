"""The compact per-directory record of files: exact answers for size+mtime, kinds, bulk
insertion, merging of pending insertions, and what it costs a file."""

from __future__ import annotations

import tracemalloc

from flatd.inputs.ledger import MERGE_AT, Kind, Ledger


def test_a_file_is_known_only_with_its_size_and_time() -> None:
    ledger = Ledger()
    assert ledger.put("a.fits", 5760, 111, Kind.SKIPPED) is None
    assert ledger.kind("a.fits", 5760, 111) is Kind.SKIPPED
    assert ledger.kind("a.fits", 5761, 111) is None  # rewritten: a different size
    assert ledger.kind("a.fits", 5760, 112) is None  # touched
    assert ledger.kind("b.fits", 5760, 111) is None
    assert ledger.put("a.fits", 9000, 222, Kind.REJECTED) is Kind.SKIPPED
    assert ledger.kind("a.fits", 5760, 111) is None
    assert ledger.kind("a.fits", 9000, 222) is Kind.REJECTED
    assert len(ledger) == 1
    assert ledger.pop("a.fits") is Kind.REJECTED
    assert ledger.pop("a.fits") is None
    assert len(ledger) == 0


def test_bulk_records_and_single_ones_agree_across_merges() -> None:
    ledger = Ledger()
    replaced = ledger.extend((f"old_{i}.fits", i, 10 * i, Kind.OLD) for i in range(5000))
    assert replaced == []
    for i in range(MERGE_AT + 10):  # more than one merge of pending insertions
        ledger.put(f"new_{i}.fits", i, i, Kind.SKIPPED)
    assert ledger.extend([("old_7.fits", 7, 70, Kind.REJECTED)]) == [Kind.OLD]
    assert len(ledger) == 5000 + MERGE_AT + 10
    assert all(ledger.kind(f"old_{i}.fits", i, 10 * i) is Kind.OLD for i in range(5000) if i != 7)
    assert ledger.kind("old_7.fits", 7, 70) is Kind.REJECTED
    assert all(ledger.kind(f"new_{i}.fits", i, i) is Kind.SKIPPED for i in range(MERGE_AT + 10))
    assert sorted(ledger.kinds()).count(Kind.SKIPPED) == MERGE_AT + 10


def test_retain_forgets_what_is_no_longer_on_disk() -> None:
    ledger = Ledger()
    ledger.extend([("a.fits", 1, 1, Kind.OLD), ("b.fits", 2, 2, Kind.SKIPPED)])
    ledger.put("c.fits", 3, 3, Kind.REJECTED)
    assert sorted(ledger.retain({"a.fits", "zzz.fits"})) == [Kind.SKIPPED, Kind.REJECTED]
    assert len(ledger) == 1 and ledger.kind("a.fits", 1, 1) is Kind.OLD
    assert ledger.retain(()) == [Kind.OLD]
    assert len(ledger) == 0


def test_a_recorded_file_costs_about_sixteen_bytes() -> None:
    names = [f"2026-10-01/flat_r_{i:06d}.fits" for i in range(50_000)]
    tracemalloc.start()
    ledger = Ledger()
    ledger.extend(
        (name, 5760, 1_700_000_000_000_000_000 + i, Kind.OLD) for i, name in enumerate(names)
    )
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(ledger) == len(names)
    assert used / len(names) < 24, f"{used / len(names):.1f} bytes a file"
