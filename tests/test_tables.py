"""exsearch/evaluation/tables.py: the one markdown table writer and its number formats."""

from exsearch.evaluation.tables import format_interval, markdown_table


def test_columns_come_in_order_of_first_appearance_and_missing_cells_stay_blank():
    rows = [{"checkpoint": "iter_0", "em": 12.345678}, {"checkpoint": "iter_1", "f1": None}]
    assert markdown_table(rows) == (
        "| checkpoint | em | f1 |\n|---|---|---|\n| iter_0 | 12.35 |  |\n| iter_1 |  |  |\n"
    )


def test_score_tables_show_floats_in_full_and_missing_scores_as_a_dash():
    rows = [{"method": "agent", "n": 1234567, "em": 12.345678, "recall": None}]
    table = markdown_table(rows, ["method", "n", "em", "recall"], floats="g", missing="–")
    assert table.splitlines()[-1] == "| agent | 1234567 | 12.3457 | – |"


def test_ints_and_strings_are_written_as_they_are():
    table = markdown_table([{"tokens": 123456789, "flag": True, "note": "x"}])
    assert table.splitlines()[-1] == "| 123456789 | True | x |"


def test_an_empty_table_says_so_unless_its_columns_are_named():
    assert markdown_table([]) == "_no rows_\n"
    assert markdown_table([], ["stage", "seconds"]) == "| stage | seconds |\n|---|---|\n"


def test_an_interval_reads_in_signed_points():
    assert format_interval({"diff": 1.25, "lo": -0.04, "hi": 2.7, "n": 9}) == "+1.2 [-0.0, +2.7]"
