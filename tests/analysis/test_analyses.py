"""The paper's analyses on a tiny model: invariance, adversarial, interpolate, manipulate, variance, report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import rcdm
from rcdm.analysis import (
    adversarial,
    augment,
    common_dimensions,
    interpolate,
    invariance,
    list_augmentations,
    manipulate,
    pgd,
    pixel_std,
    retention_score,
    slerp,
    topk_cosine,
    variance,
)
from rcdm.analysis.interpolate import lerp
from rcdm.analysis.invariance import saturation
from rcdm.cli import main
from rcdm.data import load_views
from rcdm.diffusion import start_noise
from rcdm.errors import RCDMError

FAST = dict(num_samples=2, steps=3)


@pytest.fixture(scope="module")
def tiny(tiny_run: Path):
    model = rcdm.load_model(tiny_run)
    return model, rcdm.encoder_for(model)


@pytest.fixture(scope="module")
def two_images(few_images: Path) -> list[Path]:
    return [few_images / "airplane.jpg", few_images / "cat.jpg"]


def colourful(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) images with structure and saturated colours."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand((n, 3, 4, 4), generator=g)
    return torch.nn.functional.interpolate(low, size=size, mode="bilinear").clamp(0, 1)


# --- augmentations and retention scores ------------------------------------------------------------------


def test_augmentations_are_seeded_and_keep_shape_and_range():
    x = colourful(2, 32)
    for name, aug in list_augmentations().items():
        y = augment(x, name, seed=3)
        assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1, name
        assert torch.equal(y, augment(x, name, seed=3)), name
        if aug.default_strength > 0:
            assert not torch.allclose(y, x), f"{name} at its default strength changed nothing"
    assert torch.equal(augment(x, "hflip"), x.flip(-1))
    assert torch.equal(augment(x, "rotate", 0.25), torch.rot90(x, 1, dims=(-2, -1)))
    grey = augment(x, "grayscale", 1.0)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    with pytest.raises(RCDMError, match="unknown augmentation 'sepia'"):
        augment(x, "sepia")


def test_grayscale_retention_is_one_for_grey_samples_and_zero_for_unchanged():
    x = colourful(1)[0]
    s = colourful(4, seed=1)
    grey = augment(s, "grayscale", 1.0)
    args = (x, augment(x[None], "grayscale", 1.0)[0])
    assert retention_score("saturation", s, grey, grey, *args) == pytest.approx(1.0)
    assert retention_score("saturation", s, s, grey, *args) == pytest.approx(0.0)
    assert float(saturation(grey).max()) < 1e-5
    # Greying already-grey samples changes nothing: the score is undefined, not a fake 0 or 1.
    assert math.isnan(retention_score("saturation", grey, grey, grey, *args))


def test_flip_retention_compares_samples_with_x_and_flipped_x():
    x = colourful(1, seed=2)[0]
    fx = x.flip(-1)
    near_x, near_fx = x[None].repeat(3, 1, 1, 1), fx[None].repeat(3, 1, 1, 1)
    assert retention_score("geometry", near_x, near_fx, near_fx, x, fx) == pytest.approx(1.0, abs=1e-5)
    assert retention_score("geometry", near_x, near_x, near_fx, x, fx) == pytest.approx(0.0, abs=1e-5)
    half = retention_score("geometry", near_x, (near_x + near_fx) / 2, near_fx, x, fx)
    assert 0.3 < half < 0.7


def test_colour_jitter_and_blur_retention():
    x, s = colourful(1)[0], colourful(4, seed=5)
    for name, stat in (
        ("colour_jitter", "colour"),
        ("gaussian_blur", "sharpness"),
        ("solarize", "histogram"),
    ):
        t = augment(s, name, seed=7)
        tx = augment(x[None], name, seed=7)[0]
        assert retention_score(stat, s, t, t, x, tx) == pytest.approx(1.0, abs=1e-5), name
        assert retention_score(stat, s, s, t, x, tx) == pytest.approx(0.0, abs=1e-5), name


# --- pure tensor parts -------------------------------------------------------------------------------------


def test_lerp_and_slerp_endpoints_and_norms():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    b = b / b.norm() * a.norm()
    t = torch.linspace(0, 1, 9)
    s = slerp(a, b, t)
    assert torch.allclose(s[0], a, atol=1e-5) and torch.allclose(s[-1], b, atol=1e-5)
    assert torch.allclose(s.norm(dim=-1), a.norm().expand(9), rtol=1e-5)
    assert lerp(a, b, t)[4].norm() < a.norm() * 0.99  # the chord dips inside the sphere; slerp does not
    c = 3 * b
    assert torch.allclose(slerp(a, c, t).norm(dim=-1), torch.lerp(a.norm(), c.norm(), t), rtol=1e-5)


def test_chunked_topk_equals_brute_force(tmp_path: Path):
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(5000, 32, generator=g), torch.randn(7, 32, generator=g)
    cos = torch.nn.functional.normalize(queries, dim=-1) @ torch.nn.functional.normalize(bank, dim=-1).T
    ref = cos.topk(20, dim=1)
    scores, idx = topk_cosine(queries, bank, 20, chunk=700, use_faiss=False)
    assert torch.equal(idx, ref.indices) and torch.allclose(scores, ref.values, atol=1e-6)
    path = tmp_path / "bank.safetensors"
    save_file({"representations": bank}, str(path))
    _, idx_f = topk_cosine(queries, path, 20, chunk=999)
    assert torch.equal(idx_f, ref.indices)
    with pytest.raises(RCDMError, match="k=5001"):
        topk_cosine(queries, bank, 5001)


def test_common_dimensions_rule():
    reps = torch.zeros(20, 5)
    reps[:15, 0] = 1.0  # non-zero in 15 > 14 neighbours: common
    reps[:14, 1] = 1.0  # in exactly 14: not common
    reps[:, 2] = 0.5  # in all: common
    reps[:, 3] = -1.0  # negative (never above the threshold 0): not common
    assert common_dimensions(reps, 14).tolist() == [True, False, True, False, False]
    assert common_dimensions(reps, 14, threshold=0.6).tolist() == [True, False, False, False, False]


def test_pixel_std_of_identical_samples_is_zero():
    s = colourful(1)[0][None].repeat(5, 1, 1, 1)
    assert float(pixel_std(s).abs().max()) == 0.0
    assert float(pixel_std(torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)])).mean()) == pytest.approx(
        0.5
    )


def test_pgd_moves_the_representation_within_the_eps_ball(resnet20_spec: str, few_images: Path):
    enc = rcdm.create_encoder(resnet20_spec)
    x = load_views(sorted(few_images.glob("*.jpg"))[:2], 32, 32)[1]
    eps = 4 / 255
    random_only = pgd(enc, x, eps=eps, steps=1, step_size=0.0)  # a random start, no gradient steps
    adv = pgd(enc, x, eps=eps, steps=5)
    assert float((adv - x).abs().max()) <= eps + 1e-6 and float(adv.min()) >= 0 and float(adv.max()) <= 1
    with torch.no_grad():
        clean = enc(x)
        shift = (enc(adv) - clean).norm(dim=-1)
        shift_random = (enc(random_only) - clean).norm(dim=-1)
    assert (shift > 2 * shift_random).all(), (shift, shift_random)
    target = x.roll(1, 0)
    tgt = pgd(enc, x, attack="targeted", targets=target, eps=8 / 255, steps=5)
    with torch.no_grad():
        assert ((enc(tgt) - enc(target)).norm(dim=-1) < (clean - enc(target)).norm(dim=-1)).all()


# --- the analyses on the tiny model ---------------------------------------------------------------------


def test_invariance_on_tiny_model(tiny, two_images):
    model, enc = tiny
    res = invariance(model, enc, two_images, augmentations=["grayscale", "hflip=1"], **FAST)
    assert res.aug_samples.shape == (2, 2, 2, 3, 32, 32) and res.clean_samples.shape == (2, 2, 3, 32, 32)
    assert (res.shift > 0).all() and math.isfinite(res.typical_distance)
    assert torch.allclose(res.relative_shift, res.shift / res.typical_distance)
    finite = res.retention[torch.isfinite(res.retention)]
    assert finite.numel() > 0 and ((finite >= 0) & (finite <= 1)).all()
    json.dumps(res.summary())  # JSON-ready
    with pytest.raises(RCDMError, match="unknown augmentation"):
        invariance(model, enc, two_images, augmentations=["mirror"], **FAST)


def test_adversarial_on_tiny_model(tiny, two_images):
    model, enc = tiny
    res = adversarial(model, enc, two_images, attack="label", pgd_steps=3, **FAST)
    assert res.adv_samples.shape == (2, 2, 3, 32, 32)
    assert (res.linf <= 4 / 255 + 1e-6).all() and (res.shift > 0).all()
    assert res.clean_labels is not None and 0.0 <= res.label_flip_rate <= 1.0
    assert (res.cosine < 1.0).all()


def test_interpolation_endpoints_equal_sampling_the_endpoints(tiny, two_images):
    model, enc = tiny
    res = interpolate(model, enc, two_images, num_steps=3, num_samples=2, steps=3, sampler="ddim")
    assert res.samples.shape == (2, 3, 2, 3, 32, 32)
    reps = enc.encode(load_views(two_images, 32, 32)[1])
    noise = start_noise(model.config.sample_size, 2, 0)
    for k, rep in ((0, reps[0]), (-1, reps[1])):
        direct = rcdm.sample(model, rep[None].repeat(2, 1), noise=noise, steps=3, sampler="ddim")
        for m in range(2):  # linear and spherical agree at the endpoints
            assert torch.allclose(res.samples[m, k], direct, atol=1e-4)
    assert not torch.allclose(res.samples[0, 0], res.samples[0, -1])
    with pytest.raises(RCDMError, match="deterministic"):
        interpolate(model, enc, two_images, sampler="ddpm")


def test_manipulate_on_tiny_model(tiny, two_images, few_images, tmp_path):
    model, enc = tiny
    res = manipulate(
        model, enc, two_images[0], two_images[1], few_images, k=4, n_common=2, cache=tmp_path, **FAST
    )
    assert res.samples.shape == (3, 2, 3, 32, 32) and len(res.neighbours) == 4
    src = res.representations[0]
    assert (res.representations[1][res.common] == 0).all()
    assert torch.equal(res.representations[1][~res.common], src[~res.common])
    assert torch.equal(res.representations[2][~res.common], src[~res.common])
    assert list(tmp_path.glob("reps-*.safetensors"))  # the folder's representations were cached
    again = manipulate(
        model, enc, two_images[0], two_images[1], few_images, k=4, n_common=2, cache=tmp_path, **FAST
    )
    assert torch.equal(again.common, res.common) and torch.equal(again.samples, res.samples)
    with pytest.raises(RCDMError, match="has 8 images but k=20"):
        manipulate(model, enc, two_images[0], two_images[1], few_images, **FAST)


def test_variance_on_tiny_model(tiny, two_images):
    model, enc = tiny
    res = variance(model, enc, two_images, **FAST)
    assert res.std.shape == (2, 32, 32) and (res.mean_std > 0).all()
    assert torch.allclose(res.mean_std, pixel_std(res.samples).mean(dim=(-2, -1)))


# --- CLI ----------------------------------------------------------------------------------------------------


def _cli(name: str, tiny_run: Path, images: list[Path], out: Path, *extra: str) -> int:
    return main(
        [
            "analyze",
            name,
            "--model",
            str(tiny_run),
            "--images",
            *map(str, images),
            "--num-samples",
            "2",
            "--steps",
            "3",
            "--out",
            str(out),
            *extra,
        ]
    )


def test_cli_writes_figure_and_results(tiny_run, two_images, tmp_path):
    out = tmp_path / "inv"
    assert (
        _cli(
            "invariance",
            tiny_run,
            two_images,
            out,
            "--augmentations",
            "grayscale",
            "--compare-features",
            str(tiny_run),
        )
        == 0
    )
    assert (out / "figure.png").stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    assert (
        len(results["results"]) == 2
        and results["results"][0]["augmentations"][0]["augmentation"] == "grayscale"
    )
    out = tmp_path / "itp"
    assert _cli("interpolate", tiny_run, two_images, out, "--num-steps", "3") == 0
    assert (out / "figure.png").is_file() and len(json.loads((out / "results.json").read_text())["t"]) == 3


def test_cli_bad_input_exit_code_2(tiny_run, two_images, few_images, tmp_path, capsys):
    assert _cli("invariance", tiny_run, two_images, tmp_path / "a", "--augmentations", "sepia") == 2
    assert "unknown augmentation 'sepia'" in capsys.readouterr().err
    bad = tmp_path / "not-an-image.jpg"
    bad.write_text("hello")
    assert _cli("variance", tiny_run, [bad], tmp_path / "b") == 2
    assert "cannot read image" in capsys.readouterr().err
    code = _cli(
        "manipulate",
        tiny_run,
        two_images[:1],
        tmp_path / "c",
        "--neighbours",
        str(few_images),
        "--target",
        str(two_images[1]),
    )
    assert code == 2 and "k=20" in capsys.readouterr().err
    assert _cli("interpolate", tiny_run, two_images[:1], tmp_path / "d") == 2


def test_report_writes_index_referencing_every_figure(tiny_run, two_images, few_images, tmp_path):
    out = tmp_path / "report"
    code = _cli(
        "report",
        tiny_run,
        two_images,
        out,
        "--augmentations",
        "grayscale",
        "--pgd-steps",
        "2",
        "--neighbours",
        str(few_images),
        "--target",
        str(two_images[1]),
        "--k",
        "4",
        "--n-common",
        "2",
        "--cache",
        str(tmp_path / "rep-cache"),
    )
    assert code == 0
    assert len(list((tmp_path / "rep-cache").glob("reps-*.safetensors"))) == 1  # --cache reaches manipulate
    page = (out / "index.html").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [
        "adversarial.png",
        "interpolation.png",
        "invariance.png",
        "manipulation.png",
        "variance.png",
    ]
    for name in pngs:
        assert f"src='{name}'" in page
    assert "http" not in page.replace("http-equiv", "")  # nothing to fetch: readable offline
