"""edge_seg.evaluate.hota against cases small enough to compute by hand."""

from __future__ import annotations

import numpy as np
import pytest

from edge_seg.evaluate.hota import ALPHAS, hota

ONE = np.ones((1, 1))


def test_perfect_tracking_scores_one():
    frames = [([1, 2], [7, 8], np.eye(2)) for _ in range(5)]
    assert hota(frames) == pytest.approx({"hota": 1.0, "deta": 1.0, "assa": 1.0, "loca": 1.0})


def test_an_id_switch_halves_association_but_not_detection():
    # one object, found in all 4 frames, as track 7 then track 8: every TP pairs ids whose TPA is 2 of
    # FNA 2 + FPA 0 + TPA 2 = 4 frames, so AssA = 0.5 and HOTA = sqrt(1 * 0.5)
    frames = [([1], [7], ONE), ([1], [7], ONE), ([1], [8], ONE), ([1], [8], ONE)]
    assert hota(frames) == pytest.approx({"hota": np.sqrt(0.5), "deta": 1.0, "assa": 0.5, "loca": 1.0})


def test_localisation_counts_at_the_thresholds_it_passes():
    # IoU 0.5 everywhere: a TP for alpha 0.05..0.50 (10 of 19 thresholds), nothing above (where LocA
    # counts as 1, as TrackEval has it)
    frames = [([1], [7], np.full((1, 1), 0.5)) for _ in range(3)]
    passed = int(np.count_nonzero(ALPHAS <= 0.5 + 1e-9))
    assert passed == 10 and len(ALPHAS) == 19
    assert hota(frames) == pytest.approx({"hota": 10 / 19, "deta": 10 / 19, "assa": 10 / 19,
                                          "loca": (0.5 * 10 + 9) / 19})


def test_false_positives_and_misses_lower_detection_only():
    # frame 0: object found plus a false track 9; frame 1: object missed. TP 1, FP 1, FN 1: DetA 1/3;
    # the TP's ids: TPA 1, FNA 1 (the missed frame), FPA 0: AssA 1/2
    frames = [([1], [7, 9], np.array([[1.0, 0.0]])), ([1], [], np.zeros((1, 0)))]
    assert hota(frames) == pytest.approx({"hota": np.sqrt(1 / 6), "deta": 1 / 3, "assa": 0.5, "loca": 1.0})


def test_the_match_that_keeps_identities_wins_a_tie():
    # frames 0-2: object 1 is track 7, object 2 track 8; frame 3: both tracks overlap both objects
    # fully; the global alignment picks 1-7 and 2-8 (not the swap, AssA 3/5), so association stays perfect
    clear = ([1, 2], [7, 8], np.eye(2))
    for tie in (([1, 2], [7, 8], np.ones((2, 2))), ([2, 1], [7, 8], np.ones((2, 2)))):
        assert hota([clear, clear, clear, tie])["assa"] == pytest.approx(1.0)
