"""User mistakes end in one line and exit 2 before any work; odd images load right or are refused by name; an
unforeseen exception is one line from the `rcdm` command (exit 1) but reaches Python callers as itself. End-to-end
probes across the commands and modules, on purpose (each module's own tests are in its mirrored file)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rcdm.cli import entry, main
from rcdm.data import image_tensor, load_image
from rcdm.errors import RCDMError

TRAIN = ["train", "--encoder", "pixels:4", "--preset", "tiny", "--steps", "2", "--batch-size", "4"]
TRAIN += ["--num-workers", "0", "--no-progress"]


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--steps", "0", "--steps 0"),
        ("--steps", "-5", "--steps -5"),
        ("--batch-size", "0", "--batch-size 0"),
        ("--batch-size", "-4", "--batch-size -4"),
        ("--image-size", "31", "--image-size 31"),
        ("--image-size", "0", "--image-size 0"),
        ("--image-size", "-32", "--image-size -32"),
        ("--save-every", "0", "--save-every 0"),
        ("--lr", "-1", "--lr -1.0"),
        ("--lr", "nan", "--lr nan"),
        ("--ema-decay", "2", "--ema-decay 2.0"),
        ("--num-workers", "-1", "--num-workers -1"),
        ("--gradient-accumulation-steps", "3", "--gradient-accumulation-steps 3"),
        ("--seed", "-1", "--seed -1"),
        ("--seed", str(2**32), f"--seed {2**32}"),
    ],
)
def test_bad_training_settings_are_refused_before_any_work(few_images, tmp_path, capsys, flag, value, says):
    run = tmp_path / "run"
    assert main([*TRAIN, "--data", str(few_images), flag, value, "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and says in err, err
    assert not (run / "model").exists() and not (run / "checkpoints").exists()


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--seed", "-1", "--seed -1"),
        ("--steps", "0", "--steps 0"),
        ("--guidance", "nan", "--guidance nan"),
        ("--guidance", "1e30", "--guidance 1e+30 is out of range"),
        ("--guidance", "-50", "--guidance -50.0 is out of range"),
        ("--num-samples", "1000000000", "--num-samples 1000000000 is too large: use at most 10,000"),
        (
            "--guidance-interval",
            ("5", "2"),
            "--guidance-interval [5.0, 2.0] is not an interval of noise levels",
        ),
    ],
)
def test_bad_sampling_settings_are_refused_in_one_line(few_images, tmp_path, capsys, flag, value, says):
    values = [value] if isinstance(value, str) else list(value)
    for command in (["sample"], ["analyze", "variance"], ["evaluate", "faithfulness"]):
        argv = [*command, "--model", str(tmp_path / "model"), "--images", str(few_images), flag, *values]
        assert main([*argv, "--out", str(tmp_path / "out.json")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and says in err, (command, err)
    assert not (tmp_path / "out.json").exists()


def test_an_output_that_is_a_file_is_refused(few_images, tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert main([*TRAIN, "--data", str(few_images), "--out", str(f)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_16_bit_grayscale_loads_as_its_grey_not_white(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")  # really a 16-bit file
    x = image_tensor(tmp_path / "g16.png")
    assert abs(float(x.mean()) - ramp.mean() / 65535) < 0.01  # about 0.5; Pillow's convert gives 1.0
    assert float(x.min()) == 0.0 and float(x.max()) > 0.99


def _png_header_only(path: Path, w: int, h: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def test_decompression_bombs_and_huge_images_are_refused_by_name(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 100_000, 100_000)
    with pytest.raises(RCDMError, match=r"bomb\.png.* too large to decode"):
        load_image(bomb)
    Image.new("RGB", (64, 64)).save(tmp_path / "ok.png")
    monkeypatch.setenv("RCDM_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(RCDMError, match=r"64x64.*RCDM_MAX_IMAGE_PIXELS"):
        load_image(tmp_path / "ok.png")


def test_a_bomb_in_the_training_folder_is_skipped_like_any_unreadable_file(few_images, tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    for f in sorted(few_images.iterdir()):
        (data / f.name).write_bytes(f.read_bytes())
    _png_header_only(data / "zz_bomb.png", 100_000, 100_000)
    assert main([*TRAIN, "--data", str(data), "--out", str(tmp_path / "run")]) == 0
    assert "zz_bomb.png" in caplog.text


def test_the_command_turns_an_unforeseen_exception_into_one_line(monkeypatch, capsys):
    def broken(args):
        raise ValueError("something nobody foresaw")

    import rcdm.commands.encode as encode_command

    monkeypatch.setattr(encode_command, "run", broken)  # add_parser binds func=run when the parser is built
    argv = ["encode", "--encoder", "pixels:2", "--images", "x.png", "--out", "y.safetensors"]
    with pytest.raises(ValueError, match="nobody foresaw"):  # Python callers and tests see the real exception
        main(argv)
    assert entry(argv) == 1
    err = capsys.readouterr().err
    assert "internal error: ValueError: something nobody foresaw" in err and "rerun with -v" in err
    assert "Traceback" not in err
    with pytest.raises(ValueError):
        entry(["-v", *argv])


def test_a_model_config_cannot_run_code_without_the_users_opt_in(tmp_path):
    import torch

    from rcdm.loading import encoder_for
    from rcdm.model import RCDM

    spec = "module:encoders_for_tests:mean_colour"  # importing and calling a factory is running code
    m = RCDM.from_preset("tiny", representation_dim=3, encoder=spec, feature="backbone")
    with pytest.raises(RCDMError, match=r"module:encoders_for_tests:mean_colour.*--trust-remote-code"):
        encoder_for(m)
    assert encoder_for(m, trust_remote_code=True).spec == spec
    assert encoder_for(m, spec).spec == spec  # a spec the user passes is the user's own
    assert torch.is_tensor(encoder_for(m, trust_remote_code=True)(torch.rand(1, 3, 8, 8)))


def test_rcdm_sample_runs_a_configs_code_only_with_trust_remote_code(few_images, tmp_path, capsys):
    from rcdm.model import RCDM

    folder = tmp_path / "downloaded"
    RCDM.from_preset(
        "tiny", representation_dim=3, encoder="module:encoders_for_tests:mean_colour", feature="backbone"
    ).save_pretrained(folder)
    image = str(sorted(few_images.iterdir())[0])
    argv = ["sample", "--model", str(folder), "--images", image, "--num-samples", "1", "--steps", "2"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    assert "--trust-remote-code" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main([*argv, "--trust-remote-code", "--out", str(tmp_path / "b")]) == 0
    assert list((tmp_path / "b").glob("*.png"))


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("rcdm 0.")


# --- the load and sample side: models, encoder weights, outputs ------------------------------------------

WEIGHTS = "diffusion_pytorch_model.rcdm.safetensors"


def _sample_argv(model: Path, images: Path, out: Path, *extra: str) -> list[str]:
    image = str(sorted(images.iterdir())[0])
    return ["sample", "--model", str(model), "--images", image, "--num-samples", "1", "--steps", "2",
            "--out", str(out), *extra]  # fmt: skip


def _edit_weights(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / WEIGHTS))
    edit(state)
    save_file(state, str(folder / WEIGHTS))


def _edit_config(folder: Path, edit) -> None:
    import json

    cfg = json.loads((folder / "config.json").read_text())
    edit(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


# --- encoder weights and caches that are not what they claim ---------------------------------------------


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _bad_weight_files(tmp_path: Path, good: dict) -> dict[str, Path]:
    import torch
    from safetensors.torch import save_file

    files = {"text": tmp_path / "text.pt", "evil": tmp_path / "evil.pt", "misshapen": tmp_path / "bad.pt"}
    files["text"].write_text("hello, not weights\n")
    torch.save({"w": _Evil()}, files["evil"])
    first = next(iter(good))
    torch.save({**good, first: torch.zeros(1, 2, 3)}, files["misshapen"])
    full = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in good.items()}, str(full))
    files["truncated"] = tmp_path / "trunc.safetensors"
    files["truncated"].write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    return files


def _assert_one_line_about(e: pytest.ExceptionInfo, path: Path) -> None:
    msg = str(e.value)
    assert "\n" not in msg and repr(str(path)) in msg, msg
    assert "weights_only=False" not in msg and "weights_only set to False" not in msg, msg


@pytest.mark.parametrize("kind", ["text", "evil", "misshapen", "truncated"])
def test_cifar_resnet_weights_that_are_not_weights_are_one_line_naming_the_file(tmp_path, kind):
    from rcdm.encoders import create_encoder
    from rcdm.encoders.cifar import CifarResNet

    path = _bad_weight_files(tmp_path, CifarResNet(20).state_dict())[kind]
    with pytest.raises(RCDMError) as e:
        create_encoder(f"cifar-resnet20:{path}")
    _assert_one_line_about(e, path)
    if kind == "misshapen":
        assert "misshapen keys conv1.weight (1, 2, 3)" in str(e.value)
    assert not (Path.cwd() / "pwned").exists()


@pytest.mark.parametrize("kind", ["text", "evil", "misshapen", "truncated"])
def test_torchvision_local_weights_that_are_not_weights_are_one_line_naming_the_file(tmp_path, kind):
    import torchvision

    from rcdm.encoders import create_encoder

    good = torchvision.models.resnet18(weights=None).state_dict()
    path = _bad_weight_files(tmp_path, good)[kind]
    with pytest.raises(RCDMError) as e:
        create_encoder(f"torchvision:resnet18:{path}")
    _assert_one_line_about(e, path)


def test_a_text_file_as_feature_cache_is_one_line(few_images, tmp_path, capsys):
    from rcdm.encoders import create_encoder
    from rcdm.encoders.cache import cached_representations

    text = tmp_path / "cache.safetensors"
    text.write_text("not a cache\n")
    files = sorted(few_images.iterdir())
    with pytest.raises(RCDMError, match=r"cache\.safetensors.* not a readable safetensors file"):
        cached_representations(create_encoder("pixels:2"), files, text)
    argv = [*TRAIN, "--data", str(few_images), "--feature-cache", str(text), "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    assert "cache.safetensors" in _one_line(capsys)
    assert text.read_text() == "not a cache\n"


def test_inception_weights_file_is_never_reloaded_with_weights_only_false(random_inception, monkeypatch):
    import io

    import torch

    from rcdm.metrics import create_feature_extractor

    net, weights, _ = random_inception
    real_load = torch.load
    calls = []

    def spy(source, *args, **kwargs):
        # the file itself is read only as plain tensors; torch-fidelity's own torch.load (weights_only=False)
        # gets the bytes rcdm wrote from those tensors, never the file
        calls.append((type(source).__name__, kwargs.get("weights_only")))
        if kwargs.get("weights_only") is not True and not isinstance(source, io.BytesIO):
            raise AssertionError(f"torch.load of {source!r} with weights_only={kwargs.get('weights_only')!r}")
        return real_load(source, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    extractor = create_feature_extractor("inception", weights)
    assert calls[0] == ("PosixPath", True) and all(kind == "BytesIO" for kind, _ in calls[1:])
    feats, _ = extractor(torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8))
    ref = {k: v for k, v in net.state_dict().items()}
    assert all(torch.equal(v, ref[k]) for k, v in extractor.net.state_dict().items())
    assert feats.shape == (1, 2048)


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("extra", r"unexpected keys spare\.weight"),
        ("missing", r"missing keys rep_proj\.bias"),
        ("misshapen", r"misshapen keys rep_proj\.bias \(3,\) \(expected \(128,\)\)"),
    ],
)
def test_sample_loads_weights_strictly_naming_the_key_and_file(
    pixels_model, few_images, tmp_path, capsys, damage, says
):
    import torch

    def edit(state):
        if damage == "extra":
            state["spare.weight"] = torch.zeros(2)
        elif damage == "missing":
            del state["rep_proj.bias"]
        else:
            state["rep_proj.bias"] = torch.zeros(3)

    _edit_weights(pixels_model, edit)
    assert main(_sample_argv(pixels_model, few_images, tmp_path / "out")) == 2
    err = _one_line(capsys)
    assert re.search(says, err) and WEIGHTS in err, err
    assert not (tmp_path / "out").exists()


def test_a_model_without_its_safetensors_is_refused_and_no_bin_is_unpickled(pixels_model, tmp_path):
    import torch

    from rcdm.loading import load_model

    (pixels_model / WEIGHTS).unlink()
    torch.save({"w": _Evil()}, pixels_model / "diffusion_pytorch_model.bin")  # diffusers' pickle fallback
    with pytest.raises(RCDMError, match=rf"has no weights: {WEIGHTS} is missing"):
        load_model(pixels_model)


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda c: c.update(layers_per_block="2"), r'layers_per_block = "2" is not a valid int'),
        (lambda c: c.update(block_out_channels=[32, "64"]), r"block_out_channels = \[32, \"64\"\]"),
        (lambda c: c.update(representation_dim=0), r"representation_dim = 0 must be at least 1"),
        (lambda c: c.update(bogus=1), r"unknown setting 'bogus'"),
        (lambda c: c.update(_class_name="UNet2DModel"), r"describes a UNet2DModel, not an RCDM"),
    ],
)
def test_a_malformed_model_config_is_one_line_naming_the_value_and_file(pixels_model, capsys, edit, says):
    from rcdm.loading import load_model

    _edit_config(pixels_model, edit)
    with pytest.raises(RCDMError, match=says) as e:
        load_model(pixels_model)
    assert "config.json" in str(e.value) and "\n" not in str(e.value)


def test_a_model_with_non_finite_weights_is_refused_naming_the_tensor(
    pixels_model, few_images, tmp_path, capsys
):
    def edit(state):
        state["unet.conv_out.weight"][0, 0, 0, 0] = float("nan")

    _edit_weights(pixels_model, edit)
    assert main(_sample_argv(pixels_model, few_images, tmp_path / "out")) == 2
    err = _one_line(capsys)
    assert "non-finite weights" in err and "unet.conv_out.weight" in err, err
    assert not (tmp_path / "out").exists()


def test_non_finite_samples_are_refused_not_written_black(pixels_model):
    import torch

    from rcdm.diffusion import SamplingConfig, sample_many
    from rcdm.loading import load_model

    model = load_model(pixels_model)
    with torch.no_grad():
        model.unet.conv_out.bias.fill_(float("inf"))  # e.g. an overflow in the network
    with pytest.raises(RCDMError, match=r"non-finite pixels .* in 2 of 2 samples"):
        sample_many(model, torch.zeros(1, 48), 2, SamplingConfig(steps=2))


def test_non_finite_representations_are_refused_naming_the_image(few_images):
    import torch

    from rcdm.diffusion import SamplingConfig
    from rcdm.encoders import Encoder, Preprocessing
    from rcdm.model import RCDM
    from rcdm.visualize import visualize

    class NanNet(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3)) * float("nan")

    enc = Encoder(NanNet(), Preprocessing(16), spec="module:nan:net", dim=3)
    model = RCDM.from_preset("tiny", **enc.describe())
    image = sorted(few_images.iterdir())[0]
    with pytest.raises(RCDMError, match=rf"non-finite representations .*{image.name}"):
        visualize(model, enc, [image], num_samples=1, sampling=SamplingConfig(steps=2))


# --- outputs: checked before the work, never mixed, never two writers ------------------------------------


def test_sample_refuses_an_unusable_out_before_loading_anything(few_images, tmp_path, capsys, monkeypatch):
    import rcdm.commands.sample as sample_command

    def never(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(sample_command, "load_model_and_encoder", never)
    model = tmp_path / "no-model-needed"
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    assert main(_sample_argv(model, few_images, afile)) == 2
    assert "is a file, not a folder" in _one_line(capsys)
    assert main(_sample_argv(model, few_images, afile / "sub")) == 2  # under a file: cannot be created
    assert "file.txt' is a file, not a folder" in _one_line(capsys)
    assert afile.read_text() == "x"


@contextlib.contextmanager
def _read_only(folder: Path):
    """Make `folder` unwritable for this process: chmod a-w, or for root (which ignores it) chattr +i."""
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    cmd = ["chattr", "+i", str(folder)]
    if root and (shutil.which("chattr") is None or subprocess.run(cmd, capture_output=True).returncode):
        pytest.skip("root ignores chmod and chattr +i is not available here")
    if not root:
        folder.chmod(0o555)
    try:
        yield
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        else:
            folder.chmod(0o755)


def test_sample_and_encode_refuse_a_read_only_out_before_any_work(few_images, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    image = str(sorted(few_images.iterdir())[0])
    with _read_only(ro):
        for out in (ro, ro / "sub"):  # an existing read-only folder, or one that cannot be created
            assert main(_sample_argv(tmp_path / "absent-model", few_images, out)) == 2
            assert "ro' is not a writable folder" in _one_line(capsys)
        assert (
            main(["encode", "--encoder", "pixels:2", "--images", image, "--out", str(ro / "r.safetensors")])
            == 2
        )
        assert "ro' is not a writable folder" in _one_line(capsys)


def test_a_sample_out_folder_is_never_a_mix_of_two_runs(pixels_model, few_images, tmp_path, capsys):
    out = tmp_path / "out"
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("the user's")
    assert main(_sample_argv(pixels_model, few_images, other, "--overwrite")) == 2
    assert "did not write" in _one_line(capsys) and (other / "notes.txt").read_text() == "the user's"

    assert main(_sample_argv(pixels_model, few_images, out)) == 0
    first = sorted(p.name for p in out.iterdir())
    assert "sample.json" in first
    (out / "stale.png").write_bytes(b"")  # e.g. a grid of an image the next run does not sample
    capsys.readouterr()
    assert main(_sample_argv(pixels_model, few_images, out)) == 2
    assert "--overwrite" in _one_line(capsys)
    assert main(_sample_argv(pixels_model, few_images, out, "--overwrite")) == 0
    assert sorted(p.name for p in out.iterdir()) == first  # the stale file went with the earlier output
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".*.lock"))
    # What a killed sampler left beside OUT goes at the next write; another output's temporary folder stays.
    (tmp_path / ".tmp-out-999999").mkdir()
    (tmp_path / ".old-out-999999").mkdir()
    (tmp_path / ".tmp-out-other-999999").mkdir()
    assert main(_sample_argv(pixels_model, few_images, out, "--overwrite")) == 0
    assert sorted(p.name for p in tmp_path.glob(".*-out-*")) == [".tmp-out-other-999999"]


def test_a_second_writer_to_the_same_out_is_refused_naming_the_first(
    pixels_model, few_images, tmp_path, capsys
):
    from rcdm.locks import output_lock

    out = tmp_path / "out"
    with output_lock(out):  # what a running `rcdm sample --out OUT` holds
        assert main(_sample_argv(pixels_model, few_images, out)) == 2
        err = _one_line(capsys)
        assert f"is being written by rcdm (pid {os.getpid()} on" in err, err
        assert not out.exists()
    assert main(_sample_argv(pixels_model, few_images, out)) == 0  # released


def test_encode_checks_its_out_first_and_writes_it_atomically(few_images, tmp_path, capsys):
    image = str(sorted(few_images.iterdir())[0])
    argv = ["encode", "--encoder", "pixels:2", "--images", image, "--out"]
    folder = tmp_path / "reps.safetensors"
    folder.mkdir()
    assert main([*argv, str(folder)]) == 2
    assert "is a folder" in _one_line(capsys)
    out = tmp_path / "reps2.safetensors"
    assert main([*argv, str(out)]) == 0
    capsys.readouterr()
    assert main([*argv, str(out)]) == 2
    assert "--overwrite" in _one_line(capsys)
    assert main([*argv, str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reps.safetensors", "reps2.safetensors"]


# --- the encoder a model records: its spec as given and a digest of its weights ---------------------------

FACTORIES = """
import torch
from torch import nn
from rcdm import Encoder, Preprocessing


def random_net():  # a new random init at every call, like module:torchvision.models:resnet18
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.rcdm_preprocessing = Preprocessing(16, (0.5,) * 3, (0.5,) * 3)
    return net


def readme_encoder():  # the README's Python example: an rcdm.Encoder built without a spec
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Encoder(net, Preprocessing(16, (0.5,) * 3, (0.5,) * 3))
"""


@pytest.fixture
def factories(tmp_path, monkeypatch) -> str:
    """A module `user_factories` on sys.path (tmp_path), as a user's own code would be."""
    (tmp_path / "user_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_factories"


def _train_on(spec: str, few_images: Path, tmp_path: Path) -> tuple[Path, dict]:
    """A tiny run on the encoder `spec` in tmp_path/run, and its model's config.json."""
    import json

    run = tmp_path / "run"
    assert main([*TRAIN, "--data", str(few_images), "--encoder", spec, "--out", str(run)]) == 0
    return run, json.loads((run / "model" / "config.json").read_text())


def test_an_encoder_with_new_random_weights_at_each_build_is_refused_when_training_starts(
    factories, few_images, tmp_path, capsys
):
    run = tmp_path / "run"
    argv = [
        *TRAIN,
        "--data",
        str(few_images),
        "--encoder",
        f"module:{factories}:random_net",
        "--out",
        str(run),
    ]
    assert main(argv) == 2
    err = _one_line(capsys)
    assert "has different weights each time it is built (random initialisation?)" in err, err
    assert not (run / "model").exists() and not (run / "checkpoints").exists()


def test_a_model_records_the_digest_of_its_encoders_weights_and_refuses_others(
    factories, few_images, tmp_path, capsys
):
    from rcdm.encoders import create_encoder
    from rcdm.train import TrainConfig, train

    spec = f"module:{factories}:random_net"
    run = tmp_path / "run"
    # the Python API takes a ready encoder (not rebuilt): a model of one random draw of the factory
    cfg = TrainConfig(data=str(few_images), encoder=spec, preset="tiny", steps=2, batch_size=4, num_workers=0)
    train(cfg, run, progress=False, encoder=create_encoder(spec))
    recorded = json.loads((run / "model" / "config.json").read_text())
    assert recorded["encoder"] == spec and re.fullmatch(r"[0-9a-f]{16}", recorded["encoder_weights"])
    assert create_encoder(spec).weights_digest() != recorded["encoder_weights"]  # a new random init
    capsys.readouterr()
    argv = _sample_argv(run, few_images, tmp_path / "out", "--trust-remote-code")
    assert main(argv) == 2
    err = _one_line(capsys)
    assert f"sha256:{recorded['encoder_weights']}" in err and err.count("sha256:") == 2, err
    assert not (tmp_path / "out").exists()


def test_models_without_a_recorded_digest_keep_working(pixels_model):
    from rcdm.loading import encoder_for, load_model

    model = load_model(pixels_model)
    assert model.config.encoder_weights  # recorded from pixels:4 (no weights: the digest of nothing)
    model.register_to_config(encoder_weights=None)  # an older model, or a published one
    assert encoder_for(model).spec == "pixels:4"


def test_a_factory_returning_an_encoder_without_a_spec_records_the_spec_the_user_gave(
    factories, few_images, tmp_path, capsys
):
    spec = f"module:{factories}:readme_encoder"
    run, cfg = _train_on(spec, few_images, tmp_path)
    assert cfg["encoder"] == spec and cfg["encoder_identity"] == spec  # not python:custom
    out = tmp_path / "out"
    assert main(_sample_argv(run, few_images, out, "--trust-remote-code")) == 0, capsys.readouterr().err
    assert list(out.glob("*.png"))


def test_guidance_is_bounded_wherever_it_comes_from(tmp_path):
    """The API and a bundle's index are checked too, not only the command line (saturated noise otherwise)."""
    import torch

    from rcdm.bundle import DemoBundle
    from rcdm.diffusion import SamplingConfig, sample
    from rcdm.model import RCDM

    model = RCDM.from_preset("tiny", representation_dim=4, sample_size=16, null_representation=True)
    with pytest.raises(RCDMError, match="guidance 1e\\+30 is out of range"):
        sample(model, torch.randn(1, 4), SamplingConfig(steps=2, guidance=1e30))
    for bad in ("abc", 1e30, -3):
        with pytest.raises(RCDMError, match=r"bundle.json's guidance .* is out of range"):
            _ = DemoBundle(tmp_path, {"guidance": bad}, []).guidance
    assert DemoBundle(tmp_path, {"guidance": 5}, []).guidance == 5.0


def test_an_interpolation_of_a_hundred_million_points_is_refused_before_any_work(
    few_images, tmp_path, capsys
):
    images = [str(p) for p in sorted(few_images.iterdir())[:2]]
    argv = ["analyze", "interpolate", "--model", str(tmp_path / "none"), "--images", *images]
    assert main([*argv, "--num-steps", "100000000", "--out", str(tmp_path / "o")]) == 2
    assert "--num-steps 100000000 is out of range: use 2" in capsys.readouterr().err


def test_a_trusted_factory_that_fails_is_one_line_naming_it(capsys):
    from rcdm.encoders import create_encoder

    with pytest.raises(RCDMError, match=r"module:os:system: calling system\(\) failed with TypeError"):
        create_encoder("module:os:system")  # os.system() needs an argument: the review's probe
    with pytest.raises(RCDMError, match="module:os:sep: sep is a str, not a function"):
        create_encoder("module:os:sep")
