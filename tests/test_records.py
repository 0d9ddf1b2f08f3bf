import json

import pytest

from giraffe.files.records import (
    RecordError,
    RecordReport,
    check_chat,
    check_preference,
    read_records,
)


def _write(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = json.dumps(
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
)


def test_stop_names_the_line(tmp_path):
    path = _write(tmp_path, [GOOD, "", "{not json", GOOD])
    with pytest.raises(RecordError, match=r"line 3: not valid JSON"):
        list(read_records(path, check_chat))


def test_skip_reports_every_bad_line(tmp_path):
    no_assistant = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    path = _write(tmp_path, [GOOD, "[1, 2]", no_assistant, GOOD])
    report = RecordReport(str(path))
    records = list(read_records(path, check_chat, on_error="skip", report=report))
    assert [r.line for r in records] == [1, 4]
    assert [n for n, _ in report.skipped] == [2, 3]
    assert "no assistant turn" in report.skipped[1][1]
    assert "2 records, 2 skipped" in report.summary()


def test_preference_shape(tmp_path):
    same = json.dumps({"prompt": "p", "chosen": "a", "rejected": "a"})
    missing = json.dumps({"prompt": "p", "chosen": "a"})
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
    path = _write(tmp_path, [same, missing, good])
    report = RecordReport(str(path))
    records = list(read_records(path, check_preference, on_error="skip", report=report))
    assert [r.value for r in records] == [{"prompt": "p", "chosen": "a", "rejected": "b"}]
    assert "same text" in report.skipped[0][1] and '"rejected"' in report.skipped[1][1]


def test_missing_file_and_bad_policy(tmp_path):
    with pytest.raises(RecordError, match="does not exist"):
        list(read_records(tmp_path / "nope.jsonl", check_chat))
    with pytest.raises(RecordError, match="on_error"):
        list(read_records(_write(tmp_path, [GOOD]), check_chat, on_error="ignore"))
