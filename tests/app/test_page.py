"""rcdm.app (build_app, start): the page served in-process on 127.0.0.1 with a tiny untrained model, every view
called through gradio_client (images of the model's size come back), bad uploads answered in the page."""

from __future__ import annotations

import json
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from app_for_tests import SIZE
from rcdm.app import build_app, discover_models, start

gr = pytest.importorskip("gradio", reason="the app tests need gradio: pip install -e '.[dev]' installs it")
gradio_client = pytest.importorskip("gradio_client", reason="the app tests need gradio_client (in .[dev])")

PRESET = "fast"
COMMON = [2, PRESET, 2, 0, 1.0]  # samples, preset, steps, seed, guidance


@pytest.fixture(scope="module")
def client(tiny_model: Path) -> Iterator[tuple[object, str]]:
    app = build_app(discover_models([str(tiny_model)], trust_remote_code=True), "cpu")
    url = start(app, "127.0.0.1", None)
    assert url.startswith("http://127.0.0.1:")
    try:
        yield gradio_client.Client(url, verbose=False), "tiny"
    finally:
        app.close()


def _size(path: str) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def _check(result: tuple, n_images: int) -> str:
    figure, gallery, numbers, status = result
    assert status == "", status
    assert figure is not None and _size(figure)[0] > 4 * SIZE
    assert len(gallery) == n_images
    assert all(_size(item["image"]) == (SIZE, SIZE) for item in gallery)
    return numbers


def test_samples_view(client: tuple) -> None:
    c, model = client
    numbers = _check(c.predict(None, "cat.jpg", [model], *COMMON, api_name="/samples"), 2)
    assert "mean pixel std" in numbers and model in numbers


def test_what_is_kept_view(client: tuple) -> None:
    c, model = client
    numbers = _check(c.predict(None, "cat.jpg", [model], *COMMON, api_name="/kept"), 2)  # mean + std map
    assert "mean pixel std" in numbers


def test_augment_view(client: tuple) -> None:
    c, model = client
    result = c.predict(None, "cat.jpg", [model], "grayscale", 1.0, *COMMON, api_name="/augment")
    numbers = _check(result, 3)  # augmented input + 2 samples
    assert "representation cosine" in numbers and "retention" in numbers


def test_interpolate_view(client: tuple) -> None:
    c, model = client
    result = c.predict(
        None, "cat.jpg", None, "dog.jpg", [model], 3, "linear", 1, *COMMON, api_name="/interpolate"
    )
    _check(result, 3)  # one frame per point


def test_invert_view(client: tuple) -> None:
    c, model = client
    result = c.predict(None, "cat.jpg", [model], "dog.jpg", 5, api_name="/invert")
    numbers = _check(result, 2)  # the reconstruction, and the cat's noise under the dog's representation
    assert "reconstruction PSNR" in numbers and " dB" in numbers
    _check(c.predict(None, "cat.jpg", [model], None, 5, api_name="/invert"), 1)


def test_dream_view_with_a_prior(tiny_model: Path) -> None:
    """`rcdm app --prior P`: a Dream tab draws images from representations sampled from the prior."""
    from encoders_for_tests import mean_colour_classifier
    from rcdm.prior import RepresentationPrior

    enc = mean_colour_classifier().describe()
    record = {
        "encoder": enc["encoder"],
        "encoder_identity": enc["encoder_identity"],
        "feature": enc["feature"],
    }
    prior = (RepresentationPrior(3, width=16, depth=1).eval(), {**record, "representations": 10})
    app = build_app(discover_models([str(tiny_model)], trust_remote_code=True), "cpu", prior=prior)
    url = start(app, "127.0.0.1", None)
    try:
        c = gradio_client.Client(url, verbose=False)
        numbers = _check(c.predict(["tiny"], 3, *COMMON, api_name="/dream"), 3)
        assert "prior" in numbers and enc["encoder"] in numbers
        # a prior of another encoder is a message in the page
        prior[1]["encoder_identity"] = "another"
        *_, status = c.predict(["tiny"], 2, *COMMON, api_name="/dream")
        assert "train a prior with this model" in status
    finally:
        app.close()


def test_attack_view(client: tuple) -> None:
    c, model = client
    numbers = _check(c.predict(None, "cat.jpg", [model], 2.0, 2, *COMMON, api_name="/attack"), 3)
    assert "→" in numbers and "no classifier" not in numbers  # label before -> after


def test_upload_any_size(client: tuple, tmp_path: Path) -> None:
    c, model = client
    path = tmp_path / "wide.webp"
    Image.new("RGB", (300, 120), (200, 30, 30)).save(path)
    _check(c.predict(gradio_client.handle_file(str(path)), None, [model], *COMMON, api_name="/samples"), 2)


@pytest.mark.parametrize("kind", ["text", "empty", "bomb"])
def test_bad_upload_gets_a_message(
    client: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    c, model = client
    path = tmp_path / "upload.png"
    if kind == "text":
        path.write_text("not an image")
        expected = "cannot read image 'upload.png'"
    elif kind == "empty":
        path.write_bytes(b"")
        expected = "empty"
    else:  # the server runs in this process: lower Pillow's limit so a 64x64 image counts as a bomb
        Image.new("RGB", (64, 64)).save(path)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
        expected = "too large to decode"
    figure, gallery, _, status = c.predict(
        gradio_client.handle_file(str(path)), "cat.jpg", [model], *COMMON, api_name="/samples"
    )
    assert figure is None and gallery == []
    assert status.startswith("**error:**") and expected in status and "Traceback" not in status
    preview, status = c.predict(gradio_client.handle_file(str(path)), "cat.jpg", api_name="/check")
    assert preview is None and expected in status


def test_a_user_mistake_is_a_message_in_the_page(client: tuple) -> None:
    c, model = client
    # guidance on a model trained without a null representation is ignored, not an error
    _check(c.predict(None, "cat.jpg", [model], 2, PRESET, 2, 0, 3.0, api_name="/samples"), 2)
    # NaN passes gradio's slider range check (NaN compares false); gradio_client cannot send it, so raw HTTP does
    for bad, says in (("NaN", "**error:** guidance nan is out of range"), ("1e30", "1e+30 is greater than")):
        data = f'{{"data": [null, "cat.jpg", ["{model}"], 2, "{PRESET}", 2, 0, {bad}]}}'
        assert says in _raw_call(c, "samples", data)  # in the page; 1e30 is gradio's own range check
    *_, status = c.predict(None, "cat.jpg", [], *COMMON, api_name="/samples")
    assert status == "**error:** pick at least one model"
    # the API's earlier preset labels still work; an unknown preset is a message naming the choices
    _check(
        c.predict(None, "cat.jpg", [model], 2, "fast (dpm++, 10 steps)", 2, 0, 1.0, api_name="/samples"), 2
    )
    *_, status = c.predict(None, "cat.jpg", [model], 2, "fastest", 2, 0, 1.0, api_name="/samples")
    assert status == "**error:** unknown sampling preset 'fastest': choose from fast, paired, published"


def _raw_call(c, endpoint: str, data: str) -> str:
    """POST /gradio_api/call/ENDPOINT with a raw JSON body (NaN and other values gradio_client will not send);
    the event stream of its answer."""
    url = c.src.rstrip("/") + f"/gradio_api/call/{endpoint}"
    req = urllib.request.Request(url, data.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        event = json.load(r)["event_id"]
    with urllib.request.urlopen(f"{url}/{event}", timeout=120) as r:
        return r.read().decode()


@pytest.mark.parametrize(
    ("endpoint", "data", "says"),
    [
        ("samples", '[null, "cat.jpg", ["M"], NaN, "P", 2, 0, 1]', "samples nan is out of range"),
        ("samples", '[null, "cat.jpg", ["M"], 2, "P", NaN, 0, 1]', "steps nan is out of range"),
        (
            "samples",
            '[null, "cat.jpg", ["M"], 2, "P", 2, -5, 1]',
            "seed -5 is out of range: use a number from 0 to 4294967295",
        ),
        ("attack", '[null, "cat.jpg", ["M"], NaN, 2, 2, "P", 2, 0, 1]', "epsilon nan is out of range"),
        (
            "interpolate",
            '[null, "cat.jpg", null, "dog.jpg", ["M"], NaN, "linear", 1, 2, "P", 2, 0, 1]',
            "points nan",
        ),
    ],
)
def test_numbers_the_sliders_let_through_are_refused_in_the_page(client: tuple, endpoint, data, says) -> None:
    """NaN passes gradio's range checks (comparisons with NaN are false), and a seed field takes any number."""
    c, model = client
    stream = _raw_call(
        c, endpoint, '{"data": ' + data.replace('"M"', f'"{model}"').replace('"P"', f'"{PRESET}"') + "}"
    )
    assert "**error:** " + says in stream, stream[-400:]


@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="make app-check needs Chromium (Debian: apt-get install chromium)",
)
def test_app_check_screenshots_a_rendered_page(tiny_model: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    try:
        import app_check
    finally:
        sys.path.pop(0)
    out = tmp_path / "shot.png"
    argv = ["--model", str(tiny_model), "--trust-remote-code", "--out", str(out), "--budget-ms", "20000"]
    assert app_check.main(argv) == 0
    with Image.open(out) as im:
        assert im.size == (1280, 1100)


def test_a_request_past_the_time_limit_is_stopped_with_a_message(tiny_model: Path) -> None:
    app = build_app(discover_models([str(tiny_model)], trust_remote_code=True), "cpu", request_limit_s=1e-9)
    url = start(app, "127.0.0.1", None)
    try:
        c = gradio_client.Client(url, verbose=False)
        *_, status = c.predict(None, "cat.jpg", ["tiny"], *COMMON, api_name="/samples")
    finally:
        app.close()
    assert status.startswith("**error:** stopped after 1e-09 s, the limit on one request"), status


def test_uploads_are_deleted_when_the_app_stops(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    Image.new("RGB", (SIZE, SIZE), (9, 99, 199)).save(tmp_path / "mine.png")
    app = build_app(discover_models([str(tiny_model)], trust_remote_code=True), "cpu")
    url = start(app, "127.0.0.1", None)
    try:
        c = gradio_client.Client(url, verbose=False)
        c.predict(gradio_client.handle_file(str(tmp_path / "mine.png")), None, api_name="/check")
        assert list((tmp_path / "gradio").rglob("mine.png")), "the upload never reached the app's folder"
    finally:
        app.close()
    assert not list((tmp_path / "gradio").rglob("mine.png"))


def test_the_api_speaks_the_cli_s_vocabulary(client: tuple) -> None:
    c, _ = client
    api = c.view_api(print_info=False, return_format="dict")
    endpoints = api["named_endpoints"]
    assert not [e for e in endpoints if "lambda" in e], list(endpoints)
    names = {p["parameter_name"] for e in endpoints.values() for p in e["parameters"]}
    assert {"image", "example", "models", "num_samples", "steps", "seed", "guidance"} <= names
    assert not names & {"up", "ex", "pk", "n_", "gd", "sd", "st", "pr"}, names
