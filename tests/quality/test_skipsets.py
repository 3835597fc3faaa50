"""Skip sets: every single and pair, and a sets file parsed with errors that name the line."""

import pytest

from quality.skipsets import SetsFileError, check_range, choose_sets, double_skips, label, read_sets_file


def test_18_layers_give_18_singles_and_153_pairs():
    assert len(double_skips(18)) == 153 and all(i < j for i, j in double_skips(18))
    assert len(choose_sets(18, single=True, double=False, extra=[])) == 19


def test_doubles_bring_singles_and_the_full_model_comes_first():
    sets = choose_sets(4, single=False, double=True, extra=[(1, 2), (0, 1, 3)])
    assert sets[0] == () and (2,) in sets and sets.count((1, 2)) == 1 and sets[-1] == (0, 1, 3)


def test_nothing_requested_means_single_skips():
    assert choose_sets(3, single=False, double=False, extra=[]) == [(), (0,), (1,), (2,)]


def test_labels():
    assert [label(()), label((7,)), label((3, 7))] == ["none", "7", "3+7"]


class TestSetsFile:
    def test_commas_spaces_plus_comments_and_none(self, tmp_path):
        path = tmp_path / "sets.txt"
        path.write_text("# failures to study\n5, 6\n10 11  # node B\n\n17+3\nnone\n")
        assert read_sets_file(path) == [(5, 6), (10, 11), (3, 17), ()]

    @pytest.mark.parametrize("text,message", [
        ("1,x\n", "sets.txt:1: expected 0-based layer numbers"),
        ("3\n-1\n", "sets.txt:2: expected 0-based layer numbers"),
        ("2,2\n", "sets.txt:1: layer listed twice"),
        ("# nothing\n", "lists no skip sets"),
    ])
    def test_malformed_files_name_the_line(self, tmp_path, text, message):
        path = tmp_path / "sets.txt"
        path.write_text(text)
        with pytest.raises(SetsFileError, match=message):
            read_sets_file(path)

    def test_missing_file(self, tmp_path):
        with pytest.raises(SetsFileError, match="does not exist"):
            read_sets_file(tmp_path / "nope.txt")

    def test_layers_beyond_the_model_are_refused(self):
        with pytest.raises(SetsFileError, match="names layer 18, but the model has layers 0..17"):
            check_range([(1,), (4, 18)], 18, source="sets.txt")
