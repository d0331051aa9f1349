"""Specification of tumour response from masks: lesion diameters, RECIST 1.1 and RANO classes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from personalize.predictive.response import (
    assess_response,
    axial_axis,
    measure_lesions,
    rano_response,
    rano_sum,
    recist_response,
    recist_sum,
    response_group,
)


def rectangles(*sizes: tuple[int, int], shape: tuple[int, int] = (200, 200)) -> np.ndarray:
    """A 2D mask of axis-aligned a × b rectangles, placed apart along a diagonal band."""
    mask = np.zeros(shape, dtype=bool)
    corner = 1
    for a, b in sizes:
        mask[corner:corner + a, corner:corner + b] = True
        corner += max(a, b) + 2
    return mask


def disc(radius: int, size: int = 64) -> np.ndarray:
    """The voxels whose centres lie within ``radius`` voxels of the grid centre."""
    x, y = np.mgrid[:size, :size] - size // 2
    return x**2 + y**2 <= radius**2


def test_a_rectangle_measures_its_diagonal_and_the_width_across_it():
    """L of an a × b rectangle is its diagonal hypot(a·sx, b·sy); P its extent across the diagonal, 2AB/L."""
    for spacing in ((1.0, 1.0), (0.5, 2.0)):
        (lesion,) = measure_lesions(rectangles((30, 40)), spacing)
        width, height = 30 * spacing[0], 40 * spacing[1]
        longest = math.hypot(width, height)
        assert lesion.longest_mm == pytest.approx(longest)
        assert lesion.perpendicular_mm == pytest.approx(2 * width * height / longest)
        assert lesion.area_mm2 == pytest.approx(width * height) and lesion.n_voxels == 1200
        assert lesion.slice is None and lesion.volume_mm3 is None


def test_a_digital_disc_measures_its_diameter_within_a_voxel_diagonal_both_ways():
    """A disc of radius r voxels is 2r + 1 voxels across; its L and P lie between that and 2r + √2."""
    for radius, h in ((5, 1.0), (12, 0.7)):
        (lesion,) = measure_lesions(disc(radius), (h, h))
        assert (2 * radius + 1) * h <= lesion.longest_mm + 1e-9 <= (2 * radius + math.sqrt(2)) * h + 1e-9
        assert (2 * radius - math.sqrt(2)) * h <= lesion.perpendicular_mm <= lesion.longest_mm + 1e-9


def test_anisotropic_spacing_stretches_the_diameters():
    """Halving the voxel height of a disc makes it an ellipse: L keeps the x extent, P halves."""
    (round_,) = measure_lesions(disc(15), (1.0, 1.0))
    (flat,) = measure_lesions(disc(15), (1.0, 0.5))
    assert flat.longest_mm == pytest.approx(31.0, abs=0.5)
    assert flat.perpendicular_mm == pytest.approx(round_.perpendicular_mm / 2, abs=0.5)


def test_a_single_voxel_and_a_one_voxel_wide_line_are_measured():
    """Degenerate regions (one voxel; a line, whose centres are collinear) measure by their voxel corners."""
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[2, 2] = 1
    mask[10, 5:35] = 1
    line, voxel = measure_lesions(mask, (2.0, 1.0))
    assert voxel.longest_mm == pytest.approx(math.hypot(2, 1))
    assert line.longest_mm == pytest.approx(math.hypot(2, 30))
    assert line.perpendicular_mm == pytest.approx(2 * 2 * 30 / math.hypot(2, 30))


def test_lesions_are_full_connectivity_components_largest_first():
    """Diagonal neighbours belong to one lesion; separate regions are separate lesions, sorted by L."""
    mask = np.zeros((30, 30), dtype=bool)
    mask[[1, 2, 3], [1, 2, 3]] = True
    mask[10:25, 10:20] = True
    big, staircase = measure_lesions(mask, (1.0, 1.0))
    assert staircase.n_voxels == 3 and staircase.longest_mm == pytest.approx(3 * math.sqrt(2))
    assert big.longest_mm == pytest.approx(math.hypot(15, 10))


def test_an_empty_mask_has_no_lesions():
    """No foreground, no lesions (and a zero sum), rather than an error."""
    assert measure_lesions(np.zeros((8, 8, 8), dtype=bool), (1, 1, 1)) == ()
    assert recist_sum(np.zeros((8, 8), dtype=bool), (1, 1)) == 0.0


def spindle(axis: int) -> np.ndarray:
    """A 3D lesion of squares stacked along ``axis``, widest (20 × 20) on slice 6."""
    volume = np.zeros((30, 30, 12), dtype=bool)
    for k, half in zip(range(3, 10), (2, 5, 8, 10, 7, 4, 1)):
        volume[15 - half:15 + half, 15 - half:15 + half, k] = True
    return np.moveaxis(volume, -1, axis)


def test_a_3d_lesion_is_measured_on_its_widest_axial_slice():
    """One 3D component, measured on the slice of largest L, whatever array axis the slices run along."""
    for axis in (2, 0, -1):
        spacing = [0.5, 0.5, 0.5]
        spacing[axis] = 4.0
        (lesion,) = measure_lesions(spindle(axis), spacing, axial_axis=axis)
        assert lesion.slice == 6
        assert lesion.longest_mm == pytest.approx(math.hypot(10, 10))
        assert lesion.area_mm2 == pytest.approx(100.0)
        assert lesion.volume_mm3 == pytest.approx(lesion.n_voxels * 0.25 * 4.0)


def test_3d_lesions_touching_at_a_corner_are_one():
    """3D components use full (26-)connectivity."""
    volume = np.zeros((10, 10, 10), dtype=bool)
    volume[2, 2, 2] = volume[3, 3, 3] = True
    (lesion,) = measure_lesions(volume, (1, 1, 1))
    assert lesion.n_voxels == 2 and lesion.longest_mm == pytest.approx(math.sqrt(2))


def test_axial_axis_follows_the_affine_whatever_the_orientation():
    """The axial axis is the array axis that the affine sends closest to world S/I (permuted, flipped, tilted)."""
    assert axial_axis(np.eye(4)) == 2  # RAS
    assert axial_axis(np.diag([-1.0, -1.0, 1.0, 1.0])) == 2  # LPS
    z_first = np.array([[0, 1, 0, 0], [0, 0, -1, 0], [2, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    assert axial_axis(z_first) == 0
    inferior_second = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -3, 0, 0], [0, 0, 0, 1]], dtype=float)
    assert axial_axis(inferior_second) == 1
    tilt = math.radians(20)
    oblique = np.eye(4)
    oblique[1:3, 1:3] = [[math.cos(tilt), -math.sin(tilt)], [math.sin(tilt), math.cos(tilt)]]
    assert axial_axis(oblique) == 2


def test_axial_axis_refuses_a_bad_affine():
    with pytest.raises(ValueError, match="4 x 4"):
        axial_axis(np.eye(3))


# RECIST 1.1: sums of longest diameters. Rectangles of 3-4-5 proportions have whole diagonals: 6 × 8 → 10 mm.


def test_recist_sums_the_longest_diameters_of_measurable_lesions():
    """Lesions with L < 10 mm are not measurable; the others add their L."""
    mask = rectangles((30, 40), (6, 8), (3, 4))
    assert recist_sum(mask, (1, 1)) == pytest.approx(50 + 10)
    assert recist_sum(mask, (1, 1), measurable_mm=12.0) == pytest.approx(50)


def test_recist_counts_at_most_five_targets_the_largest():
    """Of seven measurable lesions only the five largest enter the sum."""
    mask = rectangles((6, 8), (30, 40), (9, 12), (24, 32), (12, 16), (18, 24), (15, 20), shape=(260, 260))
    assert recist_sum(mask, (1, 1)) == pytest.approx(50 + 40 + 30 + 25 + 20)
    assert recist_sum(mask, (1, 1), max_targets=2) == pytest.approx(50 + 40)


@pytest.mark.parametrize(("sums", "expected"), [
    ((100.0, 70.0), "PR"),          # 30 % decrease
    ((100.0, 71.0), "SD"),          # 29 %
    ((50.0, 35.0), "PR"),
    ((20.0, 24.0), "SD"),           # +20 %, but only 4 mm
    ((25.0, 30.0), "PD"),           # +20 % and 5 mm
    ((100.0, 119.0), "SD"),         # +19 %
    ((50.0, 30.0, 36.0), "PD"),     # +20 % and 6 mm over the nadir, still below baseline
    ((50.0, 30.0, 35.0), "PR"),     # +5 mm over the nadir, only 17 %: still 30 % below baseline
    ((50.0, 0.0), "CR"),
    ((50.0, 0.0, 5.0), "PD"),       # reappearance after CR, 5 mm
    ((50.0, 0.0, 4.0), "PR"),
])
def test_recist_classes_follow_the_thresholds(sums, expected):
    """PR ≥ 30 % below baseline; PD ≥ 20 % and ≥ 5 mm over the nadir, before PR; CR when all is gone."""
    assert recist_response(sums) == expected


def test_recist_assessment_of_a_mask_series():
    """Two baseline targets (the 5 mm lesion is not one) followed by rank at any size: a shrink (PR), a
    regrowth of 10 mm over the nadir yet below baseline (PD), a cure (CR)."""
    series = [rectangles((30, 40), (6, 8), (3, 4)), rectangles((18, 24), (3, 4)), rectangles((24, 32), (3, 4)),
              np.zeros((200, 200), dtype=bool)]
    result = assess_response(series, (1.0, 1.0))
    assert result.criteria == "recist"
    assert result.sums == pytest.approx((60.0, 35.0, 45.0, 0.0))
    assert result.nadirs == pytest.approx((60.0, 35.0, 35.0))
    assert result.classes == ("PR", "PD", "CR") and result.final == "CR"
    assert [len(targets) for targets in result.targets] == [2, 2, 2, 0]


def test_recist_assessment_of_3d_masks():
    """3D masks give the same classes, measured on their widest axial slices."""
    baseline, follow_up = np.zeros((2, 60, 60, 8), dtype=bool)
    baseline[5:35, 10:50, 2:6] = True            # L = 50 mm on every slice
    follow_up[5:23, 10:34, 3] = True             # L = 30 mm: 40 % smaller
    result = assess_response([baseline, follow_up], (1.0, 1.0, 5.0))
    assert result.sums == pytest.approx((50.0, 30.0)) and result.final == "PR"
    assert result.targets[1][0].slice == 3


# RANO: sums of products. An a × b rectangle's product is L · 2ab/L = 2ab.


def test_rano_needs_both_diameters_measurable():
    """A long thin lesion is measurable by RECIST, not by RANO (P < 10 mm)."""
    mask = rectangles((10, 10), (1, 40))
    assert rano_sum(mask, (1, 1)) == pytest.approx(2 * 10 * 10)
    assert recist_sum(mask, (1, 1)) == pytest.approx(math.hypot(1, 40) + math.hypot(10, 10))


@pytest.mark.parametrize(("sums", "expected"), [
    ((200.0, 100.0), "PR"),         # 50 % decrease
    ((200.0, 101.0), "SD"),
    ((200.0, 249.0), "SD"),
    ((200.0, 250.0), "PD"),         # +25 %
    ((200.0, 80.0, 100.0), "PD"),   # +25 % over the nadir, half the baseline
    ((200.0, 0.0), "CR"),
])
def test_rano_classes_follow_the_thresholds(sums, expected):
    """PR ≥ 50 % below baseline; PD ≥ 25 % over the nadir (no absolute minimum); CR when all is gone."""
    assert rano_response(sums) == expected


def test_rano_assessment_of_a_mask_series():
    """SPD of rectangles: 200 → 100 (PR) → 120 (+20 % over the nadir: SD) → 130 (+30 %: PD) → 0 (CR)."""
    series = [rectangles((10, 10)), rectangles((5, 10)), rectangles((6, 10)), rectangles((5, 13)),
              np.zeros((200, 200), dtype=np.uint8)]
    result = assess_response(series, (1.0, 1.0), criteria="rano")
    assert result.sums == pytest.approx((200.0, 100.0, 120.0, 130.0, 0.0))
    assert result.classes == ("PR", "SD", "PD", "CR")


def test_response_groups_of_dimou():
    """CR and PR are responsive, SD stable, PD non-responsive."""
    assert [response_group(label) for label in ("CR", "PR", "SD", "PD")] == [
        "responsive", "responsive", "stable", "non-responsive"]
    with pytest.raises(ValueError, match="response class"):
        response_group("MR")


# Bad input.


@pytest.mark.parametrize(("mask", "spacing", "message"), [
    (np.zeros(8, dtype=bool), (1.0,), "2D .* or 3D"),
    (np.zeros((8, 8, 8, 2), dtype=bool), (1.0,) * 4, "2D .* or 3D"),
    (np.zeros((8, 8), dtype=bool), (1.0, 1.0, 1.0), "one value per mask axis"),
    (np.zeros((8, 8), dtype=bool), (1.0, 0.0), "positive"),
    (np.zeros((8, 8), dtype=bool), (1.0, math.nan), "positive"),
    (np.zeros((8, 8)), (1.0, 1.0), "threshold it first"),
    (np.full((8, 8), 4), (1.0, 1.0), "only 0 and 1"),
])
def test_bad_masks_and_spacings_are_refused(mask, spacing, message):
    with pytest.raises(ValueError, match=message):
        measure_lesions(mask, spacing)


def test_a_bad_axial_axis_is_refused():
    with pytest.raises(ValueError, match="axial_axis"):
        measure_lesions(np.zeros((4, 4, 4), dtype=bool), (1, 1, 1), axial_axis=3)


@pytest.mark.parametrize(("sums", "message"), [
    ((), "baseline and at least one follow-up"),
    ((50.0,), "baseline and at least one follow-up"),
    ((50.0, -1.0), "non-negative"),
    ((50.0, math.inf), "finite"),
    ((0.0, 10.0), "not evaluable"),
])
def test_bad_sums_are_refused(sums, message):
    with pytest.raises(ValueError, match=message):
        recist_response(sums)


def test_a_series_without_measurable_baseline_disease_is_not_evaluable():
    """RECIST and RANO require measurable disease at baseline."""
    small = rectangles((3, 4))
    with pytest.raises(ValueError, match="not evaluable"):
        assess_response([small, small], (1.0, 1.0))
    with pytest.raises(ValueError, match="baseline and at least one follow-up"):
        assess_response([rectangles((30, 40))], (1.0, 1.0))
    with pytest.raises(ValueError, match="criteria"):
        assess_response([small, small], (1.0, 1.0), criteria="who")
    with pytest.raises(ValueError, match="max_targets"):
        assess_response([small, small], (1.0, 1.0), max_targets=0)
