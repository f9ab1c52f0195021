"""The old name of `rcdm.pack`, kept so that scripts importing `rcdm.recipes.<module>` keep working
(`demo_pack` is now `rcdm.pack.rcdms`, `bundle` is `rcdm.pack.write`)."""

import importlib
import sys

for _old, _new in {
    "ab": "ab",
    "bundle": "write",
    "cifar10": "cifar10",
    "demo_pack": "rcdms",
    "evaluation": "evaluation",
    "ssl": "ssl",
}.items():
    sys.modules[f"{__name__}.{_old}"] = importlib.import_module(f"rcdm.pack.{_new}")
