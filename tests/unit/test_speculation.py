"""Prompt-lookup drafts and the repack probe's verdict: pure logic, no model."""

from __future__ import annotations

import signal
from pathlib import Path

from worker.llm.repack_probe import decide_repack, verdict
from worker.llm.speculation import NgramLookup


def test_draft_is_what_followed_the_last_ngram_before() -> None:
    lookup = NgramLookup([1, 2, 3, 4, 5, 6, 9, 1, 2], ngram=3)
    assert lookup.draft(4) == []  # (9, 1, 2) never occurred before
    lookup.append(3)  # (1, 2, 3) occurred at the start, followed by 4, 5, 6
    assert lookup.draft(4) == [4, 5, 6, 9]
    assert lookup.draft(2) == [4, 5]
    assert lookup.draft(0) == []


def test_draft_uses_the_latest_occurrence_and_never_the_ngram_itself() -> None:
    lookup = NgramLookup([7, 8, 9, 1, 7, 8, 9, 2], ngram=3)
    lookup.append(7)
    lookup.append(8)
    lookup.append(9)
    # (7, 8, 9) is at the end and twice before: the latest earlier one is followed by 2
    assert lookup.draft(3) == [2, 7, 8]


def test_draft_stops_at_the_end_of_the_history() -> None:
    lookup = NgramLookup([5, 5, 5], ngram=2)
    assert lookup.draft(8) == [5]  # (5, 5) at 0-1 is followed by the last 5 only
    assert NgramLookup([1, 2], ngram=3).draft(4) == []


def test_probe_verdict() -> None:
    assert verdict(0, "").repack
    died = verdict(-signal.SIGILL, "")
    assert not died.repack and "SIGILL" in died.reason
    failed = verdict(1, "Traceback\nSystemExit: cannot load the model\n")
    assert not failed.repack and "cannot load the model" in failed.reason
    assert not verdict(None, "").repack


def test_decide_repack_follows_the_setting_and_batch_invariance(tmp_path: Path) -> None:
    missing = tmp_path / "none.gguf"  # never probed: the setting or the mode decides
    assert decide_repack(True, missing) is True
    assert decide_repack(False, missing) is False
    assert decide_repack(None, missing, batch_invariant=True) is False


def test_weight_passes_follow_llamas_equal_split() -> None:
    from worker.llm.ubatches import common_draft_length, weight_passes

    assert weight_passes([0, 1, 2, 3, 4, 5, 6, 7], 512) == 1
    # the order sequences started in: consecutive runs only
    assert weight_passes([3, 0, 5, 1, 2, 4, 6, 7], 512) == 3
    # a prompt chunk of sequence 3 in id order: one token beside the others, then the rest
    assert weight_passes([0, 1, 2, 3, 3, 3, 3, 4, 5], 512) == 2
    # a gap (sequence 2 idle) splits the running tokens
    assert weight_passes([0, 1, 3, 4], 512) == 2
    # drafts: equal lengths stay one pass, unequal ones add passes
    assert weight_passes([0] * 5 + [1] * 5 + [2] * 5, 512) == 1
    assert weight_passes([0] * 5 + [1] + [2] * 5, 512) >= 3
    # n_ubatch bounds a pass
    assert weight_passes([0] * 1000, 512) == 2
    assert common_draft_length([4, 4, 0, 3]) == 3
    assert common_draft_length([0, 0, 4]) == 0
    assert common_draft_length([]) == 0
