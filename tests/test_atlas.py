"""Default atlas: MNI152 2009a from the nilearn wheel, offline, with a derived brain mask and CSF."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from personalize.overlap import dice
from simulators.anatomy import Anatomy
from simulators.atlas import _atlas_1mm, default_atlas, derive_brain_mask, derive_csf
from simulators.nifti import read_volume

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mni152_tissue"
MNI_AFFINE = np.array([[1.0, 0, 0, -98], [0, 1, 0, -134], [0, 0, 1, -72], [0, 0, 0, 1]])


def volume_ml(array: np.ndarray, anatomy: Anatomy) -> float:
    return float(array.sum(dtype=np.float64) * np.prod(anatomy.spacing_mm) / 1000)


@pytest.fixture(scope="module")
def atlas() -> Anatomy:
    """The 1 mm atlas, built from scratch with every network connection refused."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted while building the default atlas")

    _atlas_1mm.cache_clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        return default_atlas(spacing_mm=None)


def test_atlas_loads_offline_on_the_mni_grid(atlas: Anatomy) -> None:
    assert atlas.shape == (197, 233, 189)
    np.testing.assert_array_equal(atlas.affine, MNI_AFFINE)
    for name in ("wm", "gm", "csf"):
        values = getattr(atlas, name)
        assert values.dtype == np.float32 and values.min() >= 0 and values.max() <= 1
    assert (atlas.wm + atlas.gm + atlas.csf).max() <= 1 + 1e-6


def test_atlas_calls_return_new_objects_of_the_cached_build(atlas: Anatomy) -> None:
    again = default_atlas(spacing_mm=None)
    assert again is not atlas
    np.testing.assert_array_equal(again.csf, atlas.csf)
    assert not again.wm.flags.writeable


def test_atlas_tissue_volumes_are_those_of_the_mni152_brain(atlas: Anatomy) -> None:
    """MNI152 space is larger than a native adult brain (its brain mask is 1.89 L against ~1.2-1.5 L), so the
    volumes sit above native ones: measured WM 670 mL, GM 1008 mL, CSF 200 mL."""
    assert 600 < volume_ml(atlas.wm, atlas) < 750
    assert 900 < volume_ml(atlas.gm, atlas) < 1100
    assert 150 < volume_ml(atlas.csf, atlas) < 250
    assert 1.3 < volume_ml(atlas.gm, atlas) / volume_ml(atlas.wm, atlas) < 1.7


def test_atlas_at_2mm_keeps_world_grid_and_volumes(atlas: Anatomy) -> None:
    coarse = default_atlas(spacing_mm=2.0)
    assert coarse.shape == (99, 117, 95)
    assert coarse.spacing_mm == (2.0, 2.0, 2.0)
    np.testing.assert_allclose(coarse.voxel_to_world(np.full(3, -0.5)), atlas.voxel_to_world(np.full(3, -0.5)))
    for name in ("wm", "gm", "csf"):
        assert volume_ml(getattr(coarse, name), coarse) == pytest.approx(volume_ml(getattr(atlas, name), atlas),
                                                                         rel=1e-3)


def test_atlas_is_left_right_symmetric_about_the_midline(atlas: Anatomy) -> None:
    """The 2009a *symmetric* template mirrored across x = 0 (the grid's mid-plane) is itself."""
    np.testing.assert_allclose(atlas.mirror_point(np.array([30.0, -10.0, 20.0]), 0), [-30.0, -10.0, 20.0])
    mirror = atlas.mirrored(0)
    assert np.corrcoef(mirror.wm.ravel(), atlas.wm.ravel())[0, 1] > 0.99


def test_derive_brain_mask_closes_sulci_and_fills_ventricles() -> None:
    radius = np.linalg.norm(np.indices((40, 40, 40)).transpose(1, 2, 3, 0) - 19.5, axis=-1)
    tissue = ((radius < 15) & (radius > 5)).astype(np.float32)  # a ventricle inside
    tissue[19:21, :, 25:] = 0  # a 2-voxel-wide sulcus through the top
    mask = derive_brain_mask(gm=tissue, wm=np.zeros_like(tissue), closing_radius=2)
    assert mask[radius < 14].all()  # ventricle filled, sulcus bridged below the outermost voxel of the surface
    assert not mask[radius >= 15].any()  # nothing added outside the brain
    assert not derive_brain_mask(np.zeros((5, 5, 5)), np.zeros((5, 5, 5))).any()


def test_derive_csf_fills_the_mask_that_tissue_leaves_free() -> None:
    radius = np.linalg.norm(np.indices((40, 40, 40)).transpose(1, 2, 3, 0) - 19.5, axis=-1)
    wm = (radius < 6).astype(np.float32)
    gm = ((radius >= 8) & (radius < 13)).astype(np.float32) * 0.7
    csf = derive_csf(gm, wm, radius < 13)
    assert csf.min() >= 0 and (wm + gm + csf).max() <= 1 + 1e-6
    np.testing.assert_allclose(csf[(radius > 6.5) & (radius < 7.5)], 1.0, atol=1e-3)  # between WM and GM
    np.testing.assert_allclose(csf[(radius > 8.5) & (radius < 9.5)], 0.3, atol=1e-3)  # partial-volume GM
    assert 0 < csf[(radius > 12.5) & (radius < 13.5)].mean() < 1  # a soft rim at the mask edge
    assert csf[radius > 16.5].max() < 1e-3  # and fades within a few voxels


@pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"reference maps not present at {REFERENCE}")
def test_derived_brain_mask_and_csf_match_the_icbm_reference(atlas: Anatomy) -> None:
    """Against the ICBM 2009a maps: measured brain-mask Dice 0.9925, CSF>0.5 Dice 0.883, CSF correlation
    0.967, CSF 200 mL against 198 mL."""
    reference_csf = read_volume(REFERENCE / "mni_icbm152_csf_pbmap.nii.gz")
    reference_mask = read_volume(REFERENCE / "mni_icbm152_t1_brain_mask.nii.gz")
    np.testing.assert_allclose(reference_csf.affine, atlas.affine)
    mask = derive_brain_mask(atlas.gm, atlas.wm)
    assert dice(mask, reference_mask.data > 0.5) > 0.985
    assert dice(atlas.csf > 0.5, reference_csf.data > 0.5) > 0.86
    assert np.corrcoef(atlas.csf.ravel(), reference_csf.data.ravel())[0, 1] > 0.95
    assert volume_ml(atlas.csf, atlas) == pytest.approx(volume_ml(reference_csf.data, atlas), rel=0.05)
    # the three classes together give the brain mask back, so no separate atlas mask is needed
    assert dice(atlas.wm + atlas.gm + atlas.csf > 0.5, reference_mask.data > 0.5) > 0.985
