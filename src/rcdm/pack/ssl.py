"""Train a small CIFAR-10 encoder (VICReg self-supervised, or supervised) and save it for `rcdm-cifar:PATH`.

The network is a width-scaled CIFAR ResNet-20 (option-A shortcuts, channels 32/64/128 at width 2, 128-d
backbone feature) with a VICReg expander (3-layer MLP, BN + ReLU, 512-d). Small enough to bundle (about 1.7M
parameters) and to train in minutes on one GPU.

Loss: VICReg (Bardes, Ponce, LeCun, ICLR 2022, Eq. 1-6) is written here in 15 lines rather than imported:
lightly's VICRegLoss would do, but the package pulls in pytorch-lightning-era dependencies and pins that are
heavy for a single loss, and the official implementation is itself these few lines.

k-NN evaluation: weighted cosine k-NN (Wu et al., CVPR 2018, Eq. 7-8; k = 20, temperature 0.07 as in DINO) on
the test split, with the train split as memory bank; features of un-augmented images.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm.auto import tqdm

from ..devices import RunClock, autocast_for, device_name, git_commit, training_precision
from ..encoders import create_encoder
from ..encoders.cifar import (
    CifarEncoderArch,
    CifarEncoderNet,
    default_preprocessing,
    save_encoder,
)
from ..errors import NonFiniteLossError, RCDMError, TrainingInterrupted
from ..locks import run_lock
from ..metrics.knn import encoder_features, knn_accuracy
from ..runs import Checkpoints
from ..stopping import StopSignals
from ..train_config import check_output_folder
from .cards import encoder_card
from .cifar10 import cifar10_root, labelled_files, load_uint8
from .ssl_config import SSLConfig, validate_ssl_config

log = logging.getLogger(__name__)

CIFAR_LICENSE = (
    "CIFAR-10 (Krizhevsky, 2009, 'Learning Multiple Layers of Features from Tiny Images'): the authors publish "
    "no formal license; it is distributed for research use. Weights trained on it inherit that status."
)
# checkpoint folders: RUN_DIR/checkpoints/epoch-NNNN/ holding EPOCH_FILES (the newest two are kept): the end of
# epoch NNNN, or, when its state's "batch" is k > 0, k batches into it (a SIGINT or SIGTERM stopped the run there)
EPOCH_FILES: tuple[str, ...] = ("net.safetensors", "optimizer.pt", "state.json")


@dataclass
class SSLResult:
    encoder_dir: Path  # RUN_DIR/encoder, readable with create_encoder("rcdm-cifar:" + str(encoder_dir))
    epochs: int
    steps: int
    losses: list[float]  # mean loss per epoch
    knn: dict[str, float]  # {"backbone": acc, "projector": acc} on the test split, in [0, 1]
    wall_time_s: float  # all epochs, resumed runs included; counts time the process was stopped or starved
    cpu_time_s: (
        float  # CPU seconds (process + data workers, all threads) of epochs cpu_time_from_epoch + 1 ..
    )
    cpu_time_from_epoch: int = 0  # > 0: resumed from a checkpoint that predates CPU-time records


# --- data ------------------------------------------------------------------------------------------


def ssl_augment(cfg: SSLConfig, size: int = 32) -> v2.Compose:
    """uint8 (3, H, W) -> one random SSL view, float (3, size, size) in [0, 1]."""
    ops: list[torch.nn.Module] = [
        v2.RandomResizedCrop(size, scale=(cfg.min_crop, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=cfg.jitter),
        v2.RandomGrayscale(cfg.grayscale),
    ]
    if cfg.blur > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 2.0))], p=cfg.blur))
    if cfg.solarize > 0:
        ops.append(v2.RandomSolarize(threshold=128, p=cfg.solarize))
    ops.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(ops)


def supervised_augment(size: int = 32) -> v2.Compose:
    """uint8 (3, H, W) -> float (3, size, size) in [0, 1]: the standard CIFAR pad-4 random crop + flip."""
    return v2.Compose(
        [
            v2.RandomCrop(size, padding=4, padding_mode="reflect"),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


class AugmentedViews(Dataset):
    """Items: (view_1, view_2, label) for SSL (two views), or (view, view, label) reused for supervised."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable, two_views: bool):
        self.images, self.labels, self.transform, self.two_views = images, labels, transform, two_views

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.transform(self.images[i])
        b = self.transform(self.images[i]) if self.two_views else a
        return a, b, self.labels[i]


# --- loss -------------------------------------------------------------------------


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VICReg (Bardes et al. 2022, Eq. 6): z1, z2 (B, D) embeddings of two views -> scalar loss (float32).

    invariance: MSE(z1, z2); variance: mean ReLU(1 - std) per dimension (Eq. 1); covariance: squared
    off-diagonal covariance / D (Eq. 3); both regularisers averaged over the two branches as in the paper.
    """
    z1, z2 = z1.float(), z2.float()
    b, d = z1.shape
    inv = F.mse_loss(z1, z2)
    z1 = z1 - z1.mean(0)
    z2 = z2 - z2.mean(0)
    std1, std2 = torch.sqrt(z1.var(0) + eps), torch.sqrt(z2.var(0) + eps)
    var = F.relu(1 - std1).mean() / 2 + F.relu(1 - std2).mean() / 2
    off = ~torch.eye(d, dtype=torch.bool, device=z1.device)
    cov1, cov2 = (z1.T @ z1) / (b - 1), (z2.T @ z2) / (b - 1)
    cov = cov1[off].pow(2).sum() / d + cov2[off].pow(2).sum() / d
    return sim_coeff * inv + std_coeff * var + cov_coeff * cov


# --- training --------------------------------------------------------------------------------------


def _lr_at(cfg: SSLConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up for `warmup_epochs`, then cosine decay to 0 at the last step."""
    total, warm = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def train_encoder(
    cfg: SSLConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,  # after each optimizer step (step, loss)
) -> SSLResult:
    """Train the encoder of `cfg`, evaluate k-NN on the test split, save RUN_DIR/encoder (see encoders/cifar.py).

    Resumable: a SIGINT or SIGTERM ends the step under way, writes a checkpoint there and raises
    TrainingInterrupted; a run killed outright continues from its last complete epoch; `resume=True` goes on from
    either exactly as the uninterrupted run would have (same batches, same augmentations). Holds RUN_DIR/.lock
    meanwhile (a second run in the folder is refused); a full disk raises DiskFullError.
    """
    run_dir = Path(run_dir)
    validate_ssl_config(cfg)
    root = cifar10_root(cfg.data)
    check_output_folder(run_dir)  # a writable folder (created), or one line saying why not
    ckpts = Checkpoints(run_dir, "epoch-*", EPOCH_FILES, digits=4)
    with run_lock(run_dir, "rcdm recipe ssl"), ckpts.reporting_full_disk("to the run folder"):
        return _train_encoder(cfg, ckpts, root, resume=resume, progress=progress, on_step=on_step)


def _train_encoder(
    cfg: SSLConfig,
    ckpts: Checkpoints,
    root: Path,
    *,
    resume: bool,
    progress: bool,
    on_step: Callable[[int, float], None] | None,
) -> SSLResult:
    """`train_encoder` once the settings are checked and the run folder is this run's."""
    from accelerate import Accelerator

    run_dir = ckpts.run_dir
    ckpt = ckpts.start(resume)
    if (run_dir / "encoder").exists() and not resume:
        raise RCDMError(f"{str(run_dir)!r} already holds a finished encoder: choose a new --out")

    train_files, train_labels, classes = labelled_files(root / "train", cfg.limit)
    test_files, test_labels, test_classes = labelled_files(root / "test", cfg.limit)
    if classes != test_classes:
        raise RCDMError(f"train classes {classes} and test classes {test_classes} differ in {str(root)!r}")
    for split, labels in (("train", train_labels), ("test", test_labels)):
        if len(set(labels)) < 2:  # one class: every k-NN (and linear) prediction is right, and means nothing
            raise RCDMError(
                f"the {split} split of {str(root)!r} has images of {len(set(labels))} class(es) "
                f"({', '.join(classes[i] for i in sorted(set(labels)))}): the k-NN accuracy needs two classes or "
                "more, so add class folders" + (" or raise --limit" if cfg.limit is not None else "")
            )
    if cfg.batch_size > len(train_files):
        raise RCDMError(
            f"batch size {cfg.batch_size} exceeds the {len(train_files)} training images: lower --batch-size"
        )
    supervised = cfg.objective == "supervised"
    arch = CifarEncoderArch(
        depth=cfg.depth,
        width=cfg.width,
        projector=() if supervised else tuple(cfg.projector),
        num_classes=len(classes) if supervised else 0,
    )
    mp = cfg.mixed_precision
    acc = Accelerator()
    precision = training_precision(mp)
    if acc.num_processes > 1:
        raise RCDMError(
            f"the SSL recipe runs on one process, not {acc.num_processes}: start it with python, not accelerate launch"
        )
    torch.manual_seed(cfg.seed)
    net = CifarEncoderNet(arch)
    fused = acc.device.type == "cuda"
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    state = {"epoch": 0, "step": 0, "losses": [], "wall_time_s": 0.0}
    if ckpt is not None:
        weights, opt_state = ckpts.read(ckpt, "net.safetensors"), ckpts.read(ckpt, "optimizer.pt")
        net.load_state_dict(weights, strict=True)
        opt.load_state_dict(opt_state)
        state = ckpts.state(ckpt, "epoch", "step")
    # Written at an epoch's end (and every checkpoint before stops mid-epoch existed): nothing of the next epoch.
    state.setdefault("batch", 0)
    state.setdefault("epoch_loss_sum", 0.0)
    # Checkpoints written before CPU time was recorded: count it from their epoch on, and say so in the card.
    state.setdefault("cpu_time_s", 0.0)
    state.setdefault("cpu_time_from_epoch", state["epoch"])
    net, opt = acc.prepare(net, opt)
    prep = default_preprocessing()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.json").write_text(json.dumps(asdict(cfg), indent=2))

    clock = RunClock(state["wall_time_s"], state["cpu_time_s"])
    train_u8 = load_uint8(train_files)
    labels_t = torch.tensor(train_labels)
    transform = supervised_augment() if supervised else ssl_augment(cfg)
    dataset = AugmentedViews(train_u8, labels_t, transform, two_views=not supervised)
    steps_per_epoch = len(dataset) // cfg.batch_size
    bar = tqdm(
        total=cfg.epochs * steps_per_epoch,
        initial=state["step"],
        disable=None if progress else True,
        desc=cfg.objective,
    )
    core = acc.unwrap_model(net)  # the heads are called directly; `net` (prepared) runs the backbone
    step, skip, total = state["step"], state["batch"], state["epoch_loss_sum"]

    def spent(**counts: object) -> dict:
        """The checkpoint state: `counts` (epoch, batch, ...) and the time spent so far, resumes included."""
        return {
            **counts,
            "step": step,
            "wall_time_s": clock.wall_s(),
            "cpu_time_s": clock.cpu_s(),
            "cpu_time_from_epoch": state["cpu_time_from_epoch"],
        }

    def batches_of(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Epoch `epoch`'s batches: order and augmentations seeded by (seed, epoch) alone."""
        torch.manual_seed(cfg.seed * 10_007 + epoch + 1)  # augmentations in the main process (num_workers=0)
        loader = DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=cfg.num_workers,
            pin_memory=acc.device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg.seed * 10_007 + epoch),
        )
        return iter(loader)

    def batch_loss(a: torch.Tensor, b: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the classifier on view a (supervised), or VICReg between views a and b."""
        a = prep(a.to(acc.device, non_blocking=True))
        with autocast_for(acc.device, precision):
            if supervised:
                assert core.classifier is not None
                return F.cross_entropy(core.classifier(net(a)).float(), y.to(acc.device))
            b = prep(b.to(acc.device, non_blocking=True))
            assert core.projector is not None
            z1, z2 = core.projector(net(torch.cat([a, b]))).chunk(2)
            return vicreg_loss(z1, z2, cfg.sim_coeff, cfg.std_coeff, cfg.cov_coeff)

    with StopSignals() as signals:
        signals.armed = True  # from here a SIGINT or SIGTERM ends the step under way at a checkpoint
        for epoch in range(state["epoch"], cfg.epochs):
            net.train()
            batches = batches_of(epoch)
            for _ in range(skip):  # a run stopped mid-epoch: draw the batches it trained on, so that the
                next(batches)  # augmentations and the order go on as the uninterrupted run's
            done, skip = skip, 0
            for a, b, y in batches:
                for group in opt.param_groups:
                    group["lr"] = _lr_at(cfg, step, steps_per_epoch)
                loss = batch_loss(a, b, y)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise NonFiniteLossError(
                        f"loss became {value} at step {step}: stopped (lower --lr); the last complete epoch is kept"
                    )
                acc.backward(loss)
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                done += 1
                total += value
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{value:.4f}")
                if on_step is not None:
                    on_step(step, value)
                if signals.received and done < steps_per_epoch:
                    extra = spent(epoch=epoch, batch=done, epoch_loss_sum=total, losses=state["losses"])
                    ckpts.save(epoch + 1, extra, net=acc.unwrap_model(net), optimizer=opt)
                    ckpts.prune(2)
                    bar.close()
                    raise TrainingInterrupted.at(
                        signals.received,
                        f"step {step} (batch {done} of {steps_per_epoch} in epoch {epoch + 1} of {cfg.epochs}) "
                        f"in {run_dir}",
                    )
            state = spent(
                epoch=epoch + 1, batch=0, epoch_loss_sum=0.0, losses=[*state["losses"], total / max(1, done)]
            )
            total = 0.0
            ckpts.save(epoch + 1, state, net=acc.unwrap_model(net), optimizer=opt)
            ckpts.prune(2)
            log.info("epoch %d/%d: loss %.4f", epoch + 1, cfg.epochs, state["losses"][-1])
            if signals.received and epoch + 1 < cfg.epochs:
                bar.close()
                raise TrainingInterrupted.at(
                    signals.received, f"epoch {epoch + 1} of {cfg.epochs} in {run_dir}"
                )
    bar.close()

    model = acc.unwrap_model(net).float().cpu().eval()
    card = {
        "name": f"cifar10-{cfg.objective}-r{cfg.depth}w{cfg.width}",
        "objective": cfg.objective,
        "smoke": bool(cfg.smoke or cfg.limit is not None),
        "recipe": asdict(cfg),
        "epochs": state["epoch"],
        "steps": step,
        "images_seen": step * cfg.batch_size,
        "wall_time_s": state["wall_time_s"],
        "cpu_time_s": state["cpu_time_s"],
        "cpu_time_from_epoch": state["cpu_time_from_epoch"],
        "device": device_name(acc.device),
        "classes": classes,
        "data": {
            "name": "CIFAR-10 (JPEG copy, quality about 75)",
            "train_images": len(train_files),
            "test_images": len(test_files),
            "license": CIFAR_LICENSE,
        },
        "git_commit": git_commit(),
        "torch": torch.__version__,
    }
    # Evaluate the saved artefact itself: write it, load it through the registry, then add k-NN to the card.
    enc_dir = save_encoder(model, run_dir / ".encoder-eval", card)
    encoder = create_encoder(f"rcdm-cifar:{enc_dir}").to(acc.device)
    test_u8 = load_uint8(test_files)
    f_train, f_test = encoder_features(encoder, train_u8), encoder_features(encoder, test_u8)
    knn = {
        name: knn_accuracy(
            f_train[name], labels_t, f_test[name], torch.tensor(test_labels), cfg.knn_k, cfg.knn_temperature
        )
        for name in f_train
    }
    if supervised and model.classifier is not None:
        with torch.no_grad():
            logits = encoder.classifier(f_test["backbone"].to(acc.device)).float().cpu()  # type: ignore[misc]
        card["linear_accuracy"] = float((logits.argmax(1) == torch.tensor(test_labels)).float().mean())
    card["knn_accuracy"] = knn
    card["identity"] = json.loads((enc_dir / "card.json").read_text())["identity"]
    final = save_encoder(model, run_dir / "encoder", card, readme=None)
    card = json.loads((final / "card.json").read_text())
    (final / "README.md").write_text(encoder_card(card))
    shutil.rmtree(enc_dir, ignore_errors=True)
    return SSLResult(
        final,
        state["epoch"],
        step,
        state["losses"],
        knn,
        state["wall_time_s"],
        state["cpu_time_s"],
        state["cpu_time_from_epoch"],
    )
