"""Shared fixtures. Data comes from ../shared/data (never copied into the repo); tests skip when it is absent."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
import torch

from rcdm.model import RCDM

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RCDM_SHARED", ROOT.parent / "shared"))
CIFAR_TAR = SHARED / "data" / "cifar10" / "cifar10-jpeg.tar.gz"
RESNET20 = SHARED / "data" / "cifar-resnet" / "resnet20-12fca82f.th"
RESNET56 = SHARED / "data" / "cifar-resnet" / "resnet56-4bfd9763.th"
OFFICIAL = SHARED / "official-rcdm"
GOLDEN_WEIGHTS = OFFICIAL / "golden-32px.weights.safetensors"
GOLDEN_IO = OFFICIAL / "golden-32px.io.safetensors"
LAYOUT_128 = OFFICIAL / "rcdm-128-state-dict-layout.json"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# Two threads (CI's cores) unless OMP_NUM_THREADS says otherwise: beside a background job on a 2-core machine, two
# threads on a shared core run several-fold slower (measured: a tiny training step 0.3 s -> 10 s).
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (the shared development data), which is absent here")
    return path


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    """CIFAR-10 JPEGs extracted once to ~/.cache/rcdm/cifar10 (train/<class>/NNNN.jpg, test/<class>/...)."""
    need(CIFAR_TAR)
    cache = Path(os.environ.get("RCDM_CACHE", Path.home() / ".cache" / "rcdm")) / "cifar10"
    done = cache / ".extracted"
    if not done.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tarfile.open(CIFAR_TAR) as tar:
            tar.extractall(cache, filter="data")
        done.touch()
    return cache


@pytest.fixture(scope="session")
def resnet20_path() -> Path:
    return need(RESNET20)


@pytest.fixture(scope="session")
def resnet56_path() -> Path:
    return need(RESNET56)


@pytest.fixture(scope="session")
def layout_128() -> Path:
    """The key layout of the published 128 px checkpoints (shared/official-rcdm)."""
    return need(LAYOUT_128)


@pytest.fixture(scope="session")
def resnet20_spec(resnet20_path: Path) -> str:
    return f"cifar-resnet20:{resnet20_path}"


@pytest.fixture(scope="session")
def few_images(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one CIFAR-10 test image of each of 8 classes (32x32 JPEG), named <class>.jpg."""
    out = tmp_path_factory.mktemp("few")
    for c in CLASSES[:8]:
        (out / f"{c}.jpg").write_bytes((cifar_root / "test" / c / "0001.jpg").read_bytes())
    return out


@pytest.fixture(scope="session")
def tiny_run(few_images: Path, resnet20_spec: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with a tiny RCDM (tests only) trained 300 steps on `few_images` with ResNet-20 features."""
    from rcdm.train import TrainConfig, train

    run = tmp_path_factory.mktemp("tiny-run")
    cfg = TrainConfig(
        data=str(few_images),
        encoder=resnet20_spec,
        preset="tiny",
        steps=300,
        batch_size=8,
        lr=1e-3,
        ema_decay=0.99,
        save_every=300,
        num_workers=0,
        min_scale=1.0,
    )
    train(cfg, run, progress=False)
    return run


@pytest.fixture(scope="module")
def golden_state() -> dict[str, torch.Tensor]:
    """The golden vector's weights (official key layout, 32 px config), ../shared/official-rcdm."""
    from safetensors.torch import load_file

    return load_file(str(need(GOLDEN_WEIGHTS)))


@pytest.fixture(scope="module")
def golden_io() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(need(GOLDEN_IO)))


@pytest.fixture(scope="module")
def golden_model(golden_state):
    from rcdm.convert import convert

    return convert(golden_state, image_size=32, num_heads=4)


@pytest.fixture
def random_inception(tmp_path, monkeypatch):
    """torch-fidelity's FID Inception-v3 with random weights of the right shapes, saved under the real file's name
    (the real file is not available here): (the network, its weights file, an empty .pth beside it)."""
    import torch

    fid = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    with monkeypatch.context() as m:
        m.setattr(fid.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
        net = fid.FeatureExtractorInceptionV3("x", ["2048"], feature_extractor_weights_path=str(empty))
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), weights)
    return net, weights, empty


@pytest.fixture
def pixels_model(tmp_path) -> Path:
    """An untrained tiny RCDM folder on pixels:4 (a weight-free encoder): cheap to write, load and sample."""
    import torch

    from rcdm.encoders import create_encoder

    torch.manual_seed(0)
    folder = tmp_path / "model"
    RCDM.from_preset("tiny", **create_encoder("pixels:4").describe()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny RCDM (16 px) on a weight-free 3-d encoder with a classifier (so Attack has labels)."""
    from app_for_tests import SIZE
    from encoders_for_tests import mean_colour_classifier

    d = mean_colour_classifier().describe()
    model = RCDM.from_preset(
        "tiny",
        d["representation_dim"],
        sample_size=SIZE,
        encoder=d["encoder"],
        encoder_identity=d["encoder_identity"],
        feature=d["feature"],
        preprocessing=d["preprocessing"],
    )
    out = tmp_path_factory.mktemp("app-model") / "tiny"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def bundle(cifar_root: Path, few_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smoke bundle of tiny models: two tiny encoders, the three RCDM targets (tiny preset, 2 steps), 4 inputs."""
    from rcdm.pack.rcdms import RCDMRecipe, train_rcdms
    from rcdm.pack.ssl import SSLConfig, train_encoder
    from rcdm.pack.write import pack

    tiny = dict(
        epochs=1,
        batch_size=10,
        limit=20,
        depth=8,
        width=1,
        projector=(32, 32),
        num_workers=0,
        warmup_epochs=0,
    )
    root = tmp_path_factory.mktemp("demo-runs")
    train_encoder(SSLConfig(data=str(cifar_root), **tiny), root / "ssl", progress=False)
    train_encoder(
        SSLConfig(data=str(cifar_root), objective="supervised", **tiny), root / "supervised", progress=False
    )
    recipe = RCDMRecipe(
        data=str(few_images), preset="tiny", steps=2, batch_size=4, save_every=2, num_workers=0, cond_drop=0.1
    )
    train_rcdms(recipe, root, progress=False)
    out = root / "bundle"
    pack(root, out, allow_smoke=True, demo_images=sorted(few_images.glob("*.jpg"))[:4])
    return out


@pytest.fixture(scope="session")
def extended_bundle(bundle: Path, few_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of `bundle` that ships a tiny representation prior (tests only: width 32, 20 steps) of its VICReg
    backbone, with one measured number, added by `rcdm recipe add --prior`, and the adapter (the ridge map alone)
    of its supervised encoder onto its VICReg backbone RCDM, added by `rcdm recipe add --adapter`."""
    import json
    import shutil

    from rcdm.adaptation import AdaptConfig, adapt
    from rcdm.pack.write import add_to_bundle
    from rcdm.prior import PriorConfig, train_prior

    base = tmp_path_factory.mktemp("prior-bundle")
    run = base / "prior-run"
    model = bundle / "rcdm-cifar10-vicreg-backbone"
    cfg = PriorConfig(
        model=str(model), data=str(few_images), steps=20, save_every=20, width=32, depth=2, batch_size=8
    )
    before = os.environ.get("RCDM_MODELS")
    os.environ["RCDM_MODELS"] = str(bundle)  # where the model's rcdm-cifar:NAME encoder is found
    try:
        train_prior(cfg, run, progress=False)
        adapt(
            AdaptConfig(
                model=str(model),
                encoder=f"rcdm-cifar:{bundle / 'cifar10-supervised-r8w1'}",
                data=str(few_images),
                steps=0,
                adapter="linear",  # as the pack ships it
            ),
            base / "adapt",
            progress=False,
        )
    finally:
        os.environ.pop("RCDM_MODELS") if before is None else os.environ.__setitem__("RCDM_MODELS", before)
    out = base / "bundle"
    shutil.copytree(bundle, out)
    add_to_bundle(out, prior=run, metrics={"Fréchet (a test number)": 1.5})
    add_to_bundle(out, adapter=base / "adapt", metrics={"class agreement (a test number)": 0.5})
    assert json.loads((out / "bundle.json").read_text())["priors"]
    return out


@pytest.fixture(scope="module")
def guided(tmp_path_factory) -> Path:
    """A tiny model (tests only) on pixels:2 with a null representation and a recorded default: dpm++ 6, guidance 3."""

    torch.manual_seed(0)
    m = RCDM.from_preset(
        "tiny",
        representation_dim=12,
        sample_size=16,
        null_representation=True,
        encoder="pixels:2",
        sampling={"sampler": "dpm++", "steps": 6, "guidance": 3.0},
    )
    with torch.no_grad():
        m.null_rep.normal_()
    folder = tmp_path_factory.mktemp("guided") / "model"
    m.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def standardized_model():
    """An untrained tiny RCDM (6-d representation, 16 px) that standardises its representation with known
    statistics (standard deviations 1 to 6)."""

    torch.manual_seed(0)
    m = RCDM.from_preset("tiny", representation_dim=6, sample_size=16, standardize_representation=True)
    m.set_representation_stats(torch.randn(100, 6) * torch.tensor([1.0, 2, 3, 4, 5, 6]))
    return m.eval()


@pytest.fixture
def sampled_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows each network-level `rcdm.diffusion.sample` call draws, in order (what `reuse_samples` saves)."""
    import rcdm.diffusion as diffusion

    drawn: list[int] = []
    real = diffusion.sample
    monkeypatch.setattr(
        diffusion, "sample", lambda model, rep, *a, **k: drawn.append(len(rep)) or real(model, rep, *a, **k)
    )
    return drawn
