"""rcdm.commands.app (`rcdm app`): one-line answers (no gradio, no model, bad serving options, a port in use)
and help without gradio."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rcdm.cli import main

pytest.importorskip("gradio", reason="the app tests need gradio: pip install -e '.[dev]' installs it")


def test_cli_without_gradio_says_how_to_install(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now fails as if absent
    assert main(["app", "--model", str(tiny_model)]) == 2
    assert (
        capsys.readouterr().err.strip() == "rcdm app: error: rcdm app needs gradio: pip install 'rcdm[app]'"
    )


def test_cli_bad_model_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["app", "--model", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rcdm app: error: no model at") and "\n" not in err


def test_help_works_without_gradio(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # any `import gradio` while building the parser fails
    with pytest.raises(SystemExit) as e:
        main(["app", "--help"])
    assert e.value.code == 0 and "--host" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--port", "-1"], "--port -1 is out of range: use a port from 1 to 65535"),
        (["--port", "99999"], "--port 99999 is out of range"),
        (["--device", "tpu"], "--device 'tpu' is not a device: use cpu, cuda, cuda:N or mps"),
        (["--request-limit", "nan"], "--request-limit nan must be a number of seconds >= 0"),
    ],
)
def test_bad_serving_options_are_one_line_before_anything_loads(
    tiny_model: Path, capsys: pytest.CaptureFixture, args: list[str], says: str
) -> None:
    assert main(["app", "--model", str(tiny_model), "--trust-remote-code", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err, err


def test_a_port_in_use_is_one_line(tiny_model: Path, capsys: pytest.CaptureFixture) -> None:
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert main(["app", "--model", str(tiny_model), "--trust-remote-code", "--port", str(port)]) == 2
    assert f"--port {port} on 127.0.0.1 is in use by another program" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "dream"),
    [([], True), (["--prior", "none"], False), (["--model", "MODEL"], False)],
)
def test_the_installed_prior_gives_the_pack_page_a_dream_tab(
    extended_bundle: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], dream: bool
) -> None:
    """Without --model the page offers the installed models, and the installed prior made for them; with a
    user's --model, or --prior none, there is no Dream tab unless --prior names one."""
    import rcdm.app as app
    from rcdm.prior import installed_priors

    class Built(Exception):
        pass

    def build(choices, device, prior=None, request_limit_s=None):
        raise Built(prior)

    monkeypatch.setenv("RCDM_MODELS", str(extended_bundle))
    monkeypatch.setattr(app, "build_app", build)
    monkeypatch.setattr(app, "discover_models", lambda *a, **k: [])
    with pytest.raises(Built) as built:
        main(["app", *[str(tiny_model) if a == "MODEL" else a for a in args]])
    prior = built.value.args[0]
    assert (prior is not None) == dream
    if dream:
        assert prior[1]["feature"] == "backbone" and installed_priors()
