"""rcdm push (commands/push.py): refusals and offline errors in one line."""

from __future__ import annotations

from huggingface_hub import constants

from rcdm.cli import main
from test_hub import tiny_model


def test_push_cli_refuses_a_bad_repo_id(tmp_path, capsys):
    tiny_model().save_pretrained(tmp_path / "m")
    assert main(["push", str(tmp_path / "m"), "not a repo"]) == 2
    assert "not a repo id" in capsys.readouterr().err


def test_push_without_the_network_is_one_line(tmp_path, capsys, monkeypatch):
    tiny_model().save_pretrained(tmp_path / "m")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["push", str(tmp_path / "m"), "me/test", "--token", "hf_FAKEsecret123"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot reach the hub to push to 'me/test'" in err, err
    assert "hf_FAKEsecret123" not in err


def test_push_to_a_hub_that_does_not_answer_is_one_line(tmp_path, capsys, monkeypatch):
    tiny_model().save_pretrained(tmp_path / "m")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    assert main(["push", str(tmp_path / "m"), "me/test", "--token", "hf_FAKEsecret123"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot reach the hub to push to 'me/test'" in err, err
    assert "hf_FAKEsecret123" not in err


def test_push_refuses_a_damaged_run_record_and_a_hub_reference(tmp_path, capsys):
    run = tmp_path / "run"
    tiny_model().save_pretrained(run / "model")
    (run / "run.json").write_text("{not json")
    assert main(["push", str(run), "me/test"]) == 2
    assert "cannot read the run's record" in capsys.readouterr().err
    assert main(["push", "someone/else", "me/test"]) == 2
    assert "rcdm push uploads a local folder, and 'someone/else' is none" in capsys.readouterr().err
