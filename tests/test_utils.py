import shutil

import pytest
from conftest import REPO_ROOT

from lmttm_monai.utils.misc import comma_list


@pytest.mark.parametrize(
    "value, expected",
    [
        ("a,b", ["a", "b"]),
        (" a , ,b, ", ["a", "b"]),  # blanks and padding are dropped
        ("LMTTM", ["LMTTM"]),
        (("a", "b"), ["a", "b"]),  # fire: --only a,b arrives as a tuple
        (["SALSTM", "U-Net, 3 slices"], ["SALSTM", "U-Net, 3 slices"]),  # a list's items are not split again
        ((0, 1), ["0", "1"]),  # fire: --seeds 0,1
        (2, ["2"]),  # fire: --seeds 2
        ("", []),
        (None, []),
        ("3D ResNet-18,TTM", ["3D ResNet-18", "TTM"]),  # spaces inside a name are kept
    ],
)
def test_comma_list_reads_a_string_a_sequence_or_a_scalar_the_same_way(value, expected):
    assert comma_list(value) == expected


def test_results_seeds_are_read_through_comma_list_and_a_non_integer_is_a_one_line_error():
    from lmttm_monai.experiments.results import ResultsError, _seeds

    assert _seeds("2,0,1") == [2, 0, 1]  # order kept: the first seed runs first
    assert _seeds((0, 1)) == [0, 1]
    assert _seeds(0) == [0]
    with pytest.raises(ResultsError, match="comma-separated integers"):
        _seeds("0,x")
    with pytest.raises(ResultsError, match="comma-separated integers"):
        _seeds("")


def test_a_results_folder_listing_an_arm_whose_label_holds_a_comma_selects_that_arm():
    # comparison.json stores the arms' labels as a list; "U-Net, 3 slices" must not become "U-Net" and "3 slices"
    from lmttm_monai.experiments.records import comparison_named as _comparison, select_arms as _select_arms

    chosen = _select_arms(_comparison("salstm"), ["SALSTM", "U-Net, 3 slices"])
    assert [a.label for a in chosen.arms] == ["SALSTM", "U-Net, 3 slices"]


def test_the_bundles_are_found_through_the_install_and_the_environment_overrides_them(tmp_path, monkeypatch):
    from lmttm_monai.utils import BUNDLES_ENV, BundlesNotFoundError, bundle_names, bundles_dir

    monkeypatch.delenv(BUNDLES_ENV, raising=False)
    # the tests run against an editable install of this checkout: its source tree's bundles/, from the install record
    assert bundles_dir() == (REPO_ROOT / "bundles").resolve()
    assert bundle_names() == ["lmttm", "mam_swinunetr", "mam_unetr", "salstm"]
    shutil.copytree(REPO_ROOT / "bundles" / "salstm" / "configs", tmp_path / "mine" / "configs")
    monkeypatch.setenv(BUNDLES_ENV, str(tmp_path))
    assert bundles_dir() == tmp_path.resolve() and bundle_names() == ["mine"]
    monkeypatch.setenv(BUNDLES_ENV, str(tmp_path / "mine" / "configs"))
    with pytest.raises(BundlesNotFoundError, match=f"{BUNDLES_ENV}=.*: not a folder of bundles"):
        bundles_dir()
