"""The user node's job file: a chunk size that is no number of positions is refused at start, never clamped."""

from __future__ import annotations

import json

import pytest

from payload import user


@pytest.mark.parametrize("bad", [-8, 2.5, "64", True])
def test_a_job_with_a_bad_prefill_chunk_is_refused_naming_it(tmp_path, capsys, bad):
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"prompts": ["hi"], "prefill_chunk": bad}))
    with pytest.raises(SystemExit) as exited:
        user.main(["--config", str(tmp_path / "absent.json"), "--job", str(job)])
    assert exited.value.code == 2
    assert f"prefill_chunk must be a number of positions >= 0 (0: one frame), got {bad!r}" in capsys.readouterr().err
