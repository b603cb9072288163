import pytest

from lmttm_monai.utils import comma_list


@pytest.mark.parametrize(
    "value, expected",
    [
        ("a,b", ["a", "b"]),
        (" a , ,b, ", ["a", "b"]),  # blanks and padding are dropped
        ("LMTTM", ["LMTTM"]),
        (("a", "b,c"), ["a", "b", "c"]),  # fire: --only a,b arrives as a tuple
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
    from lmttm_monai.results import ResultsError, _seeds

    assert _seeds("2,0,1") == [2, 0, 1]  # order kept: the first seed runs first
    assert _seeds((0, 1)) == [0, 1]
    assert _seeds(0) == [0]
    with pytest.raises(ResultsError, match="comma-separated integers"):
        _seeds("0,x")
    with pytest.raises(ResultsError, match="comma-separated integers"):
        _seeds("")
