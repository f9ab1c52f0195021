"""Where packaged models live and how a demo bundle is read: the bundle's index and roles, the encoder cards, the
package's model and demo-image folders. Everything that only *reads* a bundle (the demo, the app, `rcdm-cifar:NAME`)
imports this module, which imports no encoder, model or training code; `rcdm.pack.write.pack` writes bundles and
`rcdm.loading.load_bundled` opens one of their models.

Layout: BUNDLE/<encoder name>/{encoder.safetensors, card.json, README.md}, BUNDLE/<target>/{config.json,
diffusion_pytorch_model.rcdm.safetensors, card.json, README.md}, optionally BUNDLE/prior-<encoder name>-<feature>/
(a representation prior) and BUNDLE/rcdm-<encoder>-via-<base>/ (an adapter of a bundled encoder onto a bundled
RCDM: config.json, adapter.safetensors, README.md), BUNDLE/demo-inputs/*, BUNDLE/bundle.json.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .checks import check_guidance
from .data import list_images
from .errors import RCDMError

BUNDLE_INDEX = "bundle.json"
CARD_NAME = "card.json"
# The "format" of an encoder's card.json and of its safetensors metadata.
ENCODER_FORMAT = "rcdm-cifar-encoder/1"

# Roles of the three bundled RCDMs in the demo and the app -> (target name, label on figures and tables).
ROLES: dict[str, tuple[str, str]] = {
    "backbone": ("rcdm-cifar10-vicreg-backbone", "VICReg backbone"),
    "projector": ("rcdm-cifar10-vicreg-projector", "VICReg projector"),
    "supervised": ("rcdm-cifar10-supervised", "supervised backbone"),
}


def bundled_models_dir() -> Path:
    """The folder of models that ship with the package: rcdm/assets/models (may not exist)."""
    return Path(str(resources.files("rcdm"))) / "assets" / "models"


def model_search_dirs() -> list[Path]:
    """Where `rcdm-cifar:NAME` looks: the folders in $RCDM_MODELS (os.pathsep-separated), then the bundled ones."""
    extra = [Path(p).expanduser() for p in os.environ.get("RCDM_MODELS", "").split(os.pathsep) if p]
    return [*extra, bundled_models_dir()]


def read_card(folder: str | Path) -> dict[str, Any]:
    """FOLDER/card.json of an encoder from `rcdm recipe ssl` or a bundle, checked to be an encoder card."""
    path = Path(folder) / CARD_NAME
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RCDMError(f"cannot read encoder card {str(path)!r}: {e}") from None
    if card.get("format") != ENCODER_FORMAT:
        raise RCDMError(f"{str(path)!r} has format {card.get('format')!r}, expected {ENCODER_FORMAT!r}")
    return card


def demo_images() -> Path:
    """The folder of bundled demo inputs (10 CIFAR-10 test images, see its README.md)."""
    return Path(str(resources.files("rcdm") / "assets" / "demo-images"))


def bundled_pack() -> Path | None:
    """The CIFAR-10 pack installed with the package (rcdm/assets/models/bundle.json), or None."""
    folder = bundled_models_dir()
    return folder if (folder / BUNDLE_INDEX).is_file() else None


@dataclass
class DemoBundle:
    """A bundle folder from `rcdm recipe pack`: its index (bundle.json) and the demo inputs it carries."""

    folder: Path
    index: dict
    inputs: list[Path]  # BUNDLE/demo-inputs/*, or the package's demo images when the bundle has none

    @property
    def smoke(self) -> bool:
        return bool(self.index.get("smoke"))

    @property
    def guidance(self) -> float:
        """The guidance weight `rcdm demo`, the app's pack models and `rcdm recipe findings` sample every bundled
        RCDM with (one for all, so that compared rows differ only by their representations; 1: none): the pack's
        --guidance, else the VICReg backbone RCDM's measured default (bundle.json `guidance_chosen_by`)."""
        value = self.index.get("guidance", 1.0)
        return check_guidance(value, f"{self.folder / 'bundle.json'}'s guidance")

    def encoder_name(self, target: str) -> str:
        """The bundled encoder of an RCDM or an adapter entry."""
        entry = self.index["rcdms"].get(target) or (self.index.get("adapters") or {})[target]
        return str(entry["encoder"])

    @property
    def adapters(self) -> dict[str, dict]:
        """name -> index entry (base, encoder, ...) of each adapter the bundle ships (`rcdm recipe add
        --adapter`) whose folder is there."""
        entries = self.index.get("adapters") or {}
        return {name: entry for name, entry in entries.items() if (self.folder / name).is_dir()}

    def adapter(self, base: str, encoder: str) -> str | None:
        """The bundle's adapter of ENCODER (a bundled encoder's name) onto the RCDM BASE, or None."""
        for name, entry in self.adapters.items():
            if entry.get("base") == base and entry.get("encoder") == encoder:
                return name
        return None

    def prior(self, target: str) -> Path | None:
        """The bundled representation prior of TARGET's encoder and feature (`rcdm recipe pack --prior`), or None."""
        rcdm = self.index["rcdms"][target]
        for name, entry in (self.index.get("priors") or {}).items():
            same = entry.get("encoder") == rcdm.get("encoder") and entry.get("feature") == rcdm.get("feature")
            if same and (self.folder / name / "prior.json").is_file():
                return self.folder / name
        return None


def read_bundle(folder: str | Path) -> DemoBundle:
    """Check that FOLDER is a complete demo bundle (bundle.json, the three RCDMs and their encoders)."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise RCDMError(
            f"no demo bundle at {str(path)!r}: the folder does not exist; make one with `rcdm recipe pack` "
            "(docs/recipes.md) or leave out --bundle"
        )
    index_path = path / BUNDLE_INDEX
    if not index_path.is_file():
        raise RCDMError(
            f"{str(path)!r} is not a demo bundle: it has no {BUNDLE_INDEX}; pass the --out folder of "
            "`rcdm recipe pack` (docs/recipes.md)"
        )
    try:
        index = json.loads(index_path.read_text())
        rcdms = index["rcdms"]
        if not isinstance(rcdms, dict) or not all(isinstance(v, dict) for v in rcdms.values()):
            raise TypeError("'rcdms' is not a mapping of entry name -> {encoder, feature, bytes}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RCDMError(f"cannot read {str(index_path)!r} as a bundle index: {e!r}") from None
    targets = [target for target, _ in ROLES.values()]
    missing = [
        name
        for name in targets
        if name not in rcdms
        or not (path / name / "config.json").is_file()
        or not (path / str(rcdms[name].get("encoder")) / CARD_NAME).is_file()
    ]
    if missing:
        raise RCDMError(
            f"the bundle {str(path)!r} lacks {missing} (or their encoders): the demo needs all of "
            f"{targets}; pack them with `rcdm recipe pack` without --only"
        )
    inputs = list_images(path / "demo-inputs") if (path / "demo-inputs").is_dir() else []
    return DemoBundle(path, index, inputs or list_images(demo_images()))
