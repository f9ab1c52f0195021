"""User mistakes end in one line and exit 2 before any work; odd images load right or are refused by name; an
unforeseen exception is one line from the `rcdm` command (exit 1) but reaches Python callers as itself."""

from __future__ import annotations

import struct
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
    ],
)
def test_bad_training_settings_are_refused_before_any_work(few_images, tmp_path, capsys, flag, value, says):
    run = tmp_path / "run"
    assert main([*TRAIN, "--data", str(few_images), flag, value, "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and says in err, err
    assert not (run / "model").exists() and not (run / "checkpoints").exists()


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
    with pytest.raises(RCDMError, match=r"bomb\.png"):
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
