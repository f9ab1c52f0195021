"""Replay the bad probes of the second reliability review (../shared/reviews/reliability.md, 2026-12-02).

    python scripts/reliability_probes_2.py [--work DIR] [--only APP-seedneg,M-dropout5] > probes2.md

The review ran 277 probes; this replays the 79 it rated bad-traceback, bad-silent, bad-hang or bad-security,
with its commands (or the closest the fixtures allow), on fixtures built in --work (default: a new temp dir):
copies of the bundled model with one config.json value changed (mdl/), crafted encoder cards (enc/) and
bundles, a seeded Hugging Face cache (hf/, HF_HUB_OFFLINE=1), a FIFO, a dangling symlink, small runs. One
Markdown row per probe: id, verdict, exit code, last line of output, note (why a row is bad; seconds).
Expectations (the review's): a user mistake exits 2 with one `rcdm ...: error:` line naming the bad value, no
traceback, no "internal error"; nothing silently wrong (an --out that is not the command's own earlier output
is refused without --overwrite, absurd guidance and NaN are refused, no half-written result is left); no hang
(a timeout is bad). Every command runs under `ulimit -v 8000000` (the app under 12 GB): a probe of the review
took all 23 GB of RAM without a cap. App probes start `rcdm app` on a free port (TMPDIR in --work, so gradio's
upload folder is known) and call its API by raw POST /gradio_api/call/ENDPOINT (NaN included), parameters
matched by name against /gradio_api/info; good there is a one-line `**error:**` status (or a gradio error
event with a message), never "unexpected error". Full-disk probes need root (20 MB tmpfs), else n/a.
Logs: WORK/logs/ID.log.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import pickle
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from contextlib import contextmanager, suppress
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("reliability_probes", ROOT / "scripts/reliability_probes.py")
rp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rp)  # the first runner: its output helpers and the shared data folder
last_line, traceback = rp.last_line, rp.traceback

MODELS = ROOT / "src" / "rcdm" / "assets" / "models"
BB = "$M/rcdm-cifar10-vicreg-backbone"  # $M: the bundled models, set in every command's environment
VLIMIT_KB, APP_VLIMIT_KB, TIMEOUT = 8_000_000, 12_000_000, 120
TOKEN = "hf_FAKEsecretTOKEN1234567890abcdef"
PY = shlex.quote(sys.executable)
CAT = "--images data/imgs8/cat.jpg"
S1 = f"{CAT} --num-samples 1 --steps 2"
CATDOG = "--images data/imgs8/cat.jpg data/imgs8/dog.jpg"
SSL = "--epochs 1 --batch-size 4 --depth 8 --width 1 --projector 16 16 --num-workers 0 --no-progress"
MANIP = f"analyze manipulate --model {BB} {S1} --neighbours data/imgs8 --target data/imgs8/dog.jpg --k 4"
MANIP += " --n-common 2"
FCACHE = "train --data data/imgs8 --encoder pixels:4 --preset tiny --steps 2 --batch-size 4 --no-progress"
PACK = "recipe pack --runs runs/rroot --only rcdm-cifar10-vicreg-backbone --allow-smoke"
WORK = Path(".")
CURRENT = ["setup"]  # the probe running now: its commands' output goes to WORK/logs/ID.log


class SetupError(Exception):
    """A probe's baseline or fixture could not be made: its row is bad and says so."""


# --- running commands ---------------------------------------------------------------------------------------


def base_env() -> dict:
    return {
        **os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"), "HF_HOME": str(WORK / "hf"),
        "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_ANALYTICS_ENABLED": "False",
        "M": str(MODELS),
    }  # fmt: skip


def start(script: str, *, env: dict | None = None, vlimit: int = VLIMIT_KB, stdout=subprocess.PIPE):
    """`bash -c 'ulimit -v VLIMIT; SCRIPT'` in WORK, in its own process group, with Ctrl-C not ignored."""
    stderr = subprocess.PIPE if stdout == subprocess.PIPE else subprocess.STDOUT
    return subprocess.Popen(
        ["bash", "-c", f"ulimit -v {vlimit}; {script}"], cwd=WORK, stdout=stdout, stderr=stderr, text=True,
        env={**base_env(), **(env or {})}, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def finish(p: subprocess.Popen, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Wait for `p`; past `timeout` its process group is killed and the exit code is 124 (as timeout(1))."""
    try:
        out, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        (out, err), rc = p.communicate(), 124
    cp = subprocess.CompletedProcess(p.args, rc, out or "", err or "")
    with open(WORK / "logs" / f"{CURRENT[0]}.log", "a") as log:
        log.write(f"$ {p.args[-1]}\n{cp.stdout}{cp.stderr}[exit {rc}]\n\n")
    return cp


def r(cmd: str, *, timeout: float = TIMEOUT, **kw) -> subprocess.CompletedProcess:
    """`rcdm CMD` (shell words; $M expands to the bundled models) under the memory cap."""
    return finish(start(f"exec {PY} -m rcdm.cli {cmd}", **kw), timeout)


def py(code: str, *args: str) -> subprocess.CompletedProcess:
    return finish(start(f"exec {PY} -c {shlex.quote(code)} {' '.join(map(shlex.quote, args))}"), 300)


def ok_or_setup(p: subprocess.CompletedProcess, what: str) -> None:
    if p.returncode != 0:
        raise SetupError(f"{what} failed (exit {p.returncode}): {last_line(p)}")


# --- verdicts -----------------------------------------------------------------------------------------------


def row(ok: bool | None, rc, line: str, note: str = "") -> tuple:
    return ("n/a" if ok is None else "good" if ok else "bad"), rc, line, note


def internal(p: subprocess.CompletedProcess) -> str:
    """The internal-error line (or 'traceback') when rcdm's safety net or a traceback shows; else ''."""
    hits = [x.strip() for x in (p.stdout + p.stderr).splitlines() if "internal error" in x]
    return hits[0][:200] if hits else "traceback" if traceback(p) else ""


def refused(p, *words: str, forbid: tuple[str, ...] = (), not_words: tuple[str, ...] = ()) -> tuple:
    """A user mistake: exit 2, one error line naming `words` (each 'a|b': a or b), no traceback, no internal
    error; `forbid`: never printed; `not_words`: not the reason the error gives."""
    problems = ["no answer before its timeout (killed)" if p.returncode == 124 else f"exit {p.returncode}"]
    problems = [x for x in problems if p.returncode != 2] + [x for x in [internal(p)] if x]
    errors = " ".join(x for x in p.stderr.splitlines() if ": error:" in x).lower()
    if p.returncode == 2:
        if (n := p.stderr.count(": error:")) != 1:
            problems.append(f"{n} error lines")
        if missing := [w for w in words if not any(a.lower() in errors for a in w.split("|"))]:
            problems.append(f"the error does not name {' / '.join(missing)}")
        if said := [w for w in not_words if w.lower() in errors]:
            problems.append(f"refused for another reason ({', '.join(said)})")
    if leaked := [f for f in forbid if f in p.stdout + p.stderr]:
        problems.append(f"printed {leaked}")
    return row(not problems, p.returncode, last_line(p), "; ".join(problems))


def also(res: tuple, ok: bool | None, why: str) -> tuple:
    """`res` made bad, with `why` added to its note, when `ok` is False; ok None: only the note."""
    if ok is True or not why:
        return res
    return (res[0] if ok is None else "bad", res[1], res[2], "; ".join(filter(None, [res[3], why])))


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        for f in sorted([path] if path.is_file() else path.rglob("*")):
            if f.is_file():
                h.update(str(f.relative_to(WORK)).encode() + f.read_bytes())
    return h.hexdigest()


def unchanged(cmd: str, *paths: str) -> tuple:
    """`rcdm CMD` must be refused (exit 2, one line) and leave `paths` (under WORK) as they were."""
    before = digest(*[WORK / p for p in paths])
    res = refused(r(cmd))
    return also(res, digest(*[WORK / p for p in paths]) == before, f"{', '.join(paths)} changed")


# --- fixtures -----------------------------------------------------------------------------------------------


def cifar_root() -> Path:
    """The extracted CIFAR-10 copy, as rcdm.pack.cifar10.cifar10_root makes it (without importing torch)."""
    root = Path(os.environ.get("RCDM_CACHE", Path.home() / ".cache" / "rcdm")) / "cifar10"
    if not (root / ".extracted").exists():
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(rp.SHARED / "cifar10" / "cifar10-jpeg.tar.gz") as tar:
            tar.extractall(root, filter="data")
        (root / ".extracted").touch()
    return root


def edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data, indent=2))  # NaN is written as the bare token NaN, as a hand edit would


MODEL_EDITS = {  # mdl/NAME: the bundled vicreg-backbone model with these config.json values
    "good": {},
    "bigchan": {"block_out_channels": [100000, 96, 96]},
    "bigchan1": {"block_out_channels": [64]},  # a list of another length than the block types
    "sample100k": {"sample_size": 100000},
    "sample1": {"sample_size": 1},
    "sample33": {"sample_size": 33},
    "dropout5": {"dropout": 5.0},
    "dropoutneg": {"dropout": -1.0},
    "dropoutnan": {"dropout": float("nan")},
    "blocktype": {"down_block_types": ["os.system", "AttnDownBlock2D", "AttnDownBlock2D"]},
    "repdim_huge": {"representation_dim": 10**12},
    "enc_ossystem": {"encoder": "module:os:system"},
    "pickle_named_st": {},  # its weights file replaced by a pickle below
}
CARD_EDITS = {"evilenc": {"width": 100000}, "evilenc2": {"projector": [-5]}, "w300": {"width": 300}}


def build_fixtures(work: Path) -> None:
    import numpy as np
    from PIL import Image

    cifar, d = cifar_root(), work / "data"
    (d / "imgs8").mkdir(parents=True)
    for c in sorted(p.name for p in (cifar / "test").iterdir())[:8]:  # airplane ... cat, dog ... horse
        shutil.copyfile(cifar / "test" / c / "0000.jpg", d / "imgs8" / f"{c}.jpg")
    for root, classes, n_train, n_test in (("mini", ("cat", "dog"), 6, 4), ("rec-oneclass", ("cat",), 4, 4)):
        for split, n in (("train", n_train), ("test", n_test)):
            for c in classes:
                (d / root / split / c).mkdir(parents=True)
                for i in range(n):
                    shutil.copyfile(cifar / split / c / f"{i:04d}.jpg", d / root / split / c / f"{i:04d}.jpg")
    (d / "dangling").mkdir()
    shutil.copyfile(d / "imgs8" / "cat.jpg", d / "dangling" / "cat.jpg")
    os.symlink("does-not-exist.jpg", d / "dangling" / "gone.jpg")
    os.mkfifo(d / "fifo.jpg")
    for sub in ("out/userdir/unet", "out/myphotos", "up", "logs", "apptmp"):
        (work / sub).mkdir(parents=True)
    (work / "out" / "afile.txt").write_text("not an image\n")
    (work / "out" / "userdir" / "unet" / "config.json").write_text("my notes\n")
    Image.new("RGB", (64, 48), "orange").save(work / "out" / "myphotos" / "figure.png")
    noise = np.random.default_rng(0).random((32, 32), dtype=np.float32)  # values in [0, 1], mean ~0.5
    Image.fromarray(noise, mode="F").save(work / "up" / "float.tif")
    for w in (20000, 60000):
        Image.new("RGB", (w, 1), "white").save(work / "up" / f"thin{w}.png")
    for name, changes in MODEL_EDITS.items():
        shutil.copytree(MODELS / "rcdm-cifar10-vicreg-backbone", work / "mdl" / name)
        edit_json(work / "mdl" / name / "config.json", lambda c, ch=changes: c.update(ch))
    weights = work / "mdl" / "pickle_named_st" / "diffusion_pytorch_model.rcdm.safetensors"
    weights.write_bytes(pickle.dumps({"unet.conv_out.weight": [0.0] * 16}, protocol=4))
    for name, arch in CARD_EDITS.items():
        shutil.copytree(MODELS / "cifar10-vicreg-r20w1", work / "enc" / name)
        edit_json(work / "enc" / name / "card.json", lambda c, a=arch: c["arch"].update(a))
    repo = work / "hf" / "hub" / "models--evil--good"  # evil/good, cached at revision main = aaa...a
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    shutil.copytree(work / "mdl" / "good", repo / "snapshots" / ("a" * 40))
    shutil.copytree(work / "mdl" / "good", work / "runs" / "badrunjson" / "model")
    (work / "runs" / "badrunjson" / "run.json").write_text('{"steps": 3, ')
    for name, guidance in (("bg-abc", "abc"), ("bg-huge", 1e30), ("bd-width", None)):
        shutil.copytree(MODELS, work / "bundles" / name)
        if guidance is not None:
            edit_json(work / "bundles" / name / "bundle.json", lambda b, g=guidance: b.update(guidance=g))
    card = work / "bundles" / "bd-width" / "cifar10-vicreg-r20w1" / "card.json"
    edit_json(card, lambda c: c["arch"].update(width=100000))


BASELINES = {  # the normal runs some probes compare against, made once on first use
    "b0": [f"sample --model {BB} {CAT} --num-samples 2 --steps 5 --out out/b0"],
    "exp1": [f"export {BB} --out out/exp1"],
    "ana1": [f"analyze variance --model {BB} {CAT} --num-samples 2 --steps 2 --out out/ana1"],
    "f2": [
        f"evaluate faithfulness --model {BB} --images data/imgs8 --num-samples 1 --steps 2 --out out/f2.json"
    ],
    "mcache": [f"{MANIP} --cache out/mcache --out out/am7"],
    "fc": [f"{FCACHE} --feature-cache out/fc.safetensors --out runs/fc1"],
    "rroot": [
        f"recipe ssl --data data/mini {SSL} --out runs/rroot/ssl",
        "recipe rcdm --runs runs/rroot --data data/mini --preset tiny --steps 2 --batch-size 4 --save-every 1"
        " --num-workers 0 --no-progress --only rcdm-cifar10-vicreg-backbone",
    ],
}  # fmt: skip


@cache
def baseline(name: str) -> None:
    for cmd in BASELINES[name]:
        ok_or_setup(r(cmd, timeout=600), f"baseline `rcdm {cmd}`")


POISON = """
import sys, torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
path, how = sys.argv[1], sys.argv[2]
with safe_open(path, "pt") as f:
    meta = f.metadata()
sd = load_file(path)
for k, t in sd.items():
    if how == "all":
        t.fill_(float("nan"))
    elif k == "representations":
        t[-1, 0] = float("nan")
save_file(sd, path, metadata=meta)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def full_disk(name: str, left_kb: int):
    """A 20 MB tmpfs at WORK/full/NAME with `left_kb` KB free (0: filled to ENOSPC); None when not root."""
    mnt = WORK / "full" / name
    mnt.mkdir(parents=True)
    mount = ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode:
        yield None
        return
    try:
        count = [f"count={20480 - left_kb}"] if left_kb else []
        subprocess.run(["dd", "if=/dev/zero", f"of={mnt}/fill", "bs=1K", *count], capture_output=True)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def diskfull(name: str, cmd: str, target: str) -> tuple:
    """`cmd` with --out OUT on a full disk, twice: 24 KB left (the review's dd count=20456), then none.
    Good: one line naming the disk or space, no 0-byte or partial result left; or, with 24 KB, a whole result
    that fitted (evaluate's few-KB result does)."""
    runs = []
    for left_kb in (24, 0):
        with full_disk(f"{name}{left_kb}", left_kb) as mnt:
            if mnt is None:
                return row(None, "-", "", "could not run: mounting a tmpfs needs root")
            p = r(cmd.replace("OUT", f"full/{name}{left_kb}/{target}"))
            files = [str(f.relative_to(mnt)) for f in mnt.rglob("*") if f.is_file() and f.name != "fill"]
            empty = [f for f in files if (mnt / f).stat().st_size == 0 and not f.endswith(".lock")]
            partial = [f for f in files if f.split("/")[0] in (target, Path(target).stem + ".md")]
            if p.returncode == 0:
                res = row(True, 0, last_line(p), "fitted in the space left")
            else:
                res = also(refused(p, "space|disk"), not partial, f"left a partial --out: {partial[:4]}")
            res = also(res, not empty, f"left 0-byte files {empty[:4]}")
            others = sorted(set(files) - set(partial) if p.returncode == 0 else set(files))
            runs.append(also(res, None, f"left {others[:3]}" if others else ""))
    (v24, rc24, line24, note24), (v0, rc0, line0, note0) = runs
    ok = v24 == v0 == "good"
    line = line24 if v24 == "bad" else line0
    note = f"24 KB left: {note24 or v24}; none left: {note0 or v0}"
    return row(ok, f"24 KB: {rc24} / full: {rc0}", line, note)


# --- the app ------------------------------------------------------------------------------------------------


class App:
    """`rcdm app ARGS` on a free port, with TMPDIR (so gradio's upload folder) in WORK/apptmp/NAME."""

    def __init__(self, args: str, name: str):
        import httpx

        self.http, self.port, self.tmp = httpx, free_port(), WORK / "apptmp" / name
        self.tmp.mkdir(parents=True)
        self.log_path = WORK / "logs" / f"app-{name}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        script = f"exec {PY} -m rcdm.cli app --port {self.port} {args}"
        self.p = start(script, env={"TMPDIR": str(self.tmp)}, vlimit=APP_VLIMIT_KB, stdout=self.log)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 120) -> bool:
        """True once the page answers; False when the app exits (or is still silent after `timeout` s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.p.poll() is None:
            with suppress(self.http.HTTPError):
                return self.http.get(self.url + "/", timeout=3) is not None
            time.sleep(1)
        return False

    def output(self) -> subprocess.CompletedProcess:
        text = self.log_path.read_text()
        return subprocess.CompletedProcess(self.p.args, self.p.poll(), text, text)

    def params(self, endpoint: str) -> list[dict]:
        """The endpoint's parameters now (name, default, type), from /gradio_api/info."""
        info = self.http.get(self.url + "/gradio_api/info", timeout=30).json()["named_endpoints"]
        if f"/{endpoint}" not in info:
            raise SetupError(f"the app has no /{endpoint} endpoint now: {sorted(info)}")
        return info[f"/{endpoint}"]["parameters"]

    def choices(self, endpoint: str, role: str) -> list[str]:
        t = self.params(endpoint)[ROLES[endpoint].index(role)]["type"]
        return t.get("enum") or t.get("items", {}).get("enum") or []

    def upload(self, path: Path) -> dict:
        with open(path, "rb") as f:
            files = [("files", (path.name, f))]
            got = self.http.post(f"{self.url}/gradio_api/upload", files=files, timeout=120)
        got.raise_for_status()
        return {"path": got.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}

    def call(self, endpoint: str, timeout: float = 300, **values) -> tuple[str, object]:
        """Raw POST /gradio_api/call/ENDPOINT (NaN allowed), then its event stream: ('complete', outputs),
        ('error', message) or ('timeout', None). `values` by role (ROLES: the inputs' order in the page's
        go.click, as the raw API takes them); the others take the defaults /gradio_api/info gives."""
        params = self.params(endpoint)
        if len(params) != len(ROLES[endpoint]) or set(values) - set(ROLES[endpoint]):
            names = [q["parameter_name"] for q in params]
            raise SetupError(f"/{endpoint} now takes {names}, not {ROLES[endpoint]}: update ROLES")
        roles = zip(ROLES[endpoint], params, strict=True)
        data = [values.get(k, q.get("parameter_default")) for k, q in roles]
        base = f"{self.url}/gradio_api/call/{endpoint}"
        body = json.dumps({"data": data})
        sent = self.http.post(base, content=body, headers={"content-type": "application/json"}, timeout=60)
        deadline, event = time.monotonic() + timeout, None
        with self.http.stream("GET", f"{base}/{sent.json()['event_id']}", timeout=timeout) as resp:
            for line in resp.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    data = json.loads(line[5:].strip() or "null")
                    if event == "complete":
                        return "complete", data
                    return "error", data.get("error") if isinstance(data, dict) else data
                if time.monotonic() > deadline:
                    break
        return "timeout", None

    def peak_kb(self, reset: bool = False) -> int:
        if reset:  # clear the high-water mark (root, Linux >= 4.0); else it stays the lifetime peak
            with suppress(OSError):
                Path(f"/proc/{self.p.pid}/clear_refs").write_text("5")
        status = Path(f"/proc/{self.p.pid}/status").read_text()
        return int(next(x.split()[1] for x in status.splitlines() if x.startswith("VmHWM")))

    def stop(self) -> str:
        """Ctrl-C (what the app tells its user), then SIGTERM, then SIGKILL; returns what stopped it."""
        how = "already exited"
        for sig, wait in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            if self.p.poll() is not None:
                break
            os.killpg(self.p.pid, sig)
            how = sig.name
            with suppress(subprocess.TimeoutExpired):
                self.p.wait(wait)
        self.log.close()
        return how


SAMPLING = ["n", "preset", "steps", "seed", "guidance"]  # `common` in src/rcdm/app/__init__.py
ROLES = {  # each API endpoint's inputs in order (the components its go.click lists); names here are ours
    "check": ["image", "example"],
    "samples": ["image", "example", "models", *SAMPLING],
    "attack": ["image", "example", "models", "eps", "pgd_steps", *SAMPLING],
    "interpolate": [
        "image",
        "example",
        "image_b",
        "example_b",
        "models",
        "points",
        "method",
        "rows",
        *SAMPLING,
    ],
}


def page(res: tuple[str, object], *, refuse: bool = True) -> tuple:
    """A view's answer: good is a one-line `**error:**` status (or a gradio error event with a message); with
    refuse=False a drawn result is good too. Never "unexpected error". Exit column as in the review."""
    kind, data = res
    if kind == "complete":
        status = (data[-1] or "").strip()
        line = f"figure={'yes' if data[0] else 'none'} status={status!r}"
        if "unexpected error" in status:
            return row(False, 0, line, "unexpected error in the page (and a traceback in the app's log)")
        if status.startswith("**error:**") and "\n" not in status:
            return row(True, 0, line, "refused in the page")
        return row(not refuse, 0, line, "accepted" if refuse else "")
    if kind == "error":
        ok = bool(data) and "upstream gradio app" not in str(data).lower()
        why = "" if ok else "gradio error without a message: a bare 'Error' in the page"
        return row(ok, 1, f"error event: {data}", why)
    return row(False, 124, "no answer", "no answer within 300 s")


def app_probes():
    """(id, fn(app, ctx)), run in this order against one `rcdm app` (the bundled pack)."""

    def sampling(app, ctx, endpoint="samples", **kw):
        base = {"image": None, "example": ctx["cat"], "models": [ctx["label"]], "n": 1, "preset": ctx["fast"]}
        return app.call(endpoint, **{**base, "steps": 2, "seed": 0, "guidance": 5, **kw})

    def thin(width):
        def probe(app, ctx):
            fd = app.upload(WORK / "up" / f"thin{width}.png")
            before = app.peak_kb(reset=True)
            res = page(app.call("check", image=fd, example=None), refuse=False)
            rise = app.peak_kb() - before
            res = also(res, rise < 1_000_000, "the app's memory rose by over 1 GB")
            return also(res, None, f"app peak RSS +{rise / 1e6:.2f} GB")

        return probe

    def float_tif(app, ctx):
        tif = app.upload(WORK / "up" / "float.tif")
        res = page(sampling(app, ctx, image=tif, example=None, n=2), refuse=False)
        if res[3] == "refused in the page" or res[0] == "bad":
            return res
        load = "from rcdm.data import load_image as L; print(numpy.asarray(L(sys.argv[1])).mean())"
        code = f"import sys, numpy; {load}"
        p = py(code, str(WORK / "up" / "float.tif"))
        mean = float(p.stdout.split()[-1]) if p.returncode == 0 else -1.0
        res = also(res, mean > 20, "decoded to black without a word")
        return also(res, None, f"load_image mean {mean:.1f} (the [0, 1] noise scaled to 0..255: ~127)")

    def accumulate(app, ctx):
        import numpy as np
        from PIL import Image

        tag = uuid.uuid4().hex[:8]
        for i in range(3):  # random pixels: ~1.9 MB PNGs (the review's were 58 MB)
            pixels = np.random.default_rng(i).integers(0, 255, (800, 800, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(WORK / "up" / f"rnd-{tag}-{i}.png")
            app.upload(WORK / "up" / f"rnd-{tag}-{i}.png")

        def found() -> list[Path]:
            return [f for d in (app.tmp, Path("/tmp/gradio")) if d.is_dir() for f in d.rglob(f"rnd-{tag}-*")]

        during, how = found(), app.stop()
        after = found()
        line = f"{len(during)} uploads in the app's temp folder while it ran, {len(after)} left after {how}"
        ok = len(during) == 3 and not after
        return row(ok, 0, line, "" if ok else f"left in {after[0].parent}" if after else "uploads not found")

    nan = float("nan")
    interp = {"image_b": None, "example_b": "dog.jpg", "points": nan, "method": "linear", "rows": 1}
    yield "APP-thin20000-preview", thin(20000)
    yield "APP-thin60000-preview", thin(60000)
    yield "APP-float-tif", float_tif
    yield "APP-seedneg", lambda app, ctx: page(sampling(app, ctx, seed=-5))
    yield "APP-seedhuge", lambda app, ctx: page(sampling(app, ctx, seed=1e30))
    yield "APP-nnan-raw", lambda app, ctx: page(sampling(app, ctx, n=nan))
    yield "APP-stnan-raw", lambda app, ctx: page(sampling(app, ctx, steps=nan))
    yield "APP-attack-ps-nan", lambda app, ctx: page(sampling(app, ctx, "attack", eps=4, pgd_steps=nan))
    yield "APP-interp-k-nan", lambda app, ctx: page(sampling(app, ctx, "interpolate", **interp))
    yield "APP-upload-accumulate", accumulate


@cache
def cuda_app() -> tuple[str, object]:
    """`rcdm app --device cuda` with no GPU: ('exited', output) or ('served', its first /samples answer)."""
    app = App("--device cuda", "cuda")
    try:
        if not app.wait(120):
            app.stop()
            return "exited", app.output()
        return "served", app.call("samples", image=None, n=1, steps=2, seed=0, guidance=5)
    finally:
        app.stop()


# --- the CLI probes -----------------------------------------------------------------------------------------

# id ~ words its error must name ('a|b': a or b) ~ options (see `simple`) ~ the command after `rcdm`
SIMPLE = """
APP-port-neg ~ port ~ t=90 ~ app --port -1
APP-port-huge ~ port ~ t=90 ~ app --port 99999
APP-device-bogus ~ tpu ~ t=90 ~ app --device tpu --port {PORT}
M-bigchan ~ block_out_channels ~ ~ sample --model mdl/bigchan {S1} --out out/m-bigchan
M-bigchan1 ~ block_out_channels ~ ~ sample --model mdl/bigchan1 {S1} --out out/m-bigchan1
M-sample100k ~ sample_size ~ ~ sample --model mdl/sample100k {S1} --out out/m-sample100k
M-sample1 ~ sample_size ~ ~ sample --model mdl/sample1 {S1} --out out/m-sample1
M-sample33 ~ sample_size ~ ~ sample --model mdl/sample33 {S1} --out out/m-sample33
M-dropout5 ~ dropout ~ ~ sample --model mdl/dropout5 {S1} --out out/m-dropout5
M-dropoutneg ~ dropout ~ ~ sample --model mdl/dropoutneg {S1} --out out/m-dropoutneg
M-dropoutnan ~ dropout ~ ~ sample --model mdl/dropoutnan {S1} --out out/m-dropoutnan
M-blocktype ~ down_block_types|os.system ~ ~ sample --model mdl/blocktype {S1} --out out/m-blocktype
M-repdim_huge ~ representation_dim ~ ~ sample --model mdl/repdim_huge {S1} --out out/m-repdim_huge
M-enc_ossystem-trust ~ os:system|os.system ~ ~ sample --trust-remote-code --model mdl/enc_ossystem {S1}
    --out out/m-eos
ENC-card-width ~ width ~ ~ encode --encoder rcdm-cifar:{WORK}/enc/evilenc {CAT} --out out/enc-w.safetensors
ENC-card-projneg ~ projector ~ ~ encode --encoder rcdm-cifar:{WORK}/enc/evilenc2 --feature projector {CAT}
    --out out/enc-p.safetensors
ENC-card-width300 ~ width ~ t=300 ~ encode --encoder rcdm-cifar:{WORK}/enc/w300 {CAT}
    --out out/enc-w300.safetensors
HUB-rev-traversal ~ evil/good|revision ~ ~ sample --model evil/good@../../../../mdl/good {S1} --out out/hub-rt
PUSH-offline ~ offline|reach ~ forbid ~ push mdl/good me/test --token {TOKEN}
PUSH-nonet ~ reach|connect|network|internet|offline ~ forbid nonet ~ push mdl/good me/test --token {TOKEN}
PUSH-runjson-corrupt ~ run.json ~ ~ push runs/badrunjson me/test --token x
PUSH-badconfig ~ dropout ~ notoffline ~ push mdl/dropout5 me/test --token x
PUSH-nanweights-check ~ safetensors|weights ~ notoffline ~ push mdl/pickle_named_st me/test --token x
PUSH-hubref ~ ~ ~ push evil/good me/test --token x
EXP-unloadable ~ dropout ~ ~ export mdl/dropout5 --out out/exp-d5
EVA-ns-huge2 ~ num-samples|num_samples ~ ~ evaluate faithfulness --model {BB} {CATDOG}
    --num-samples 1000000000 --steps 1 --out out/e3.json
SAM-ns-huge ~ num-samples|num_samples ~ ~ sample --model {BB} {CAT} --num-samples 1000000000 --steps 1
    --out out/s-huge
ANA-interp-stepshuge ~ num-steps|num_steps ~ ~ analyze interpolate --model {BB} {CATDOG} --num-samples 1
    --steps 2 --num-steps 100000000 --out out/aihuge
ANA-man-threshold-nan ~ threshold ~ ~ {MANIP} --threshold nan --out out/am4
REC-ssl-limitneg ~ limit ~ ~ recipe ssl --data data/mini {SSL} --limit -4 --out runs/ssl-lneg
REC-ssl-projneg ~ projector ~ ~ recipe ssl --data data/mini {SSL} --projector -5 --out runs/ssl-pneg
REC-ssl-lrneg ~ lr ~ ~ recipe ssl --data data/mini {SSL} --lr -1 --out runs/ssl-lrneg
REC-ssl-lrnan ~ lr ~ ~ recipe ssl --data data/mini {SSL} --lr nan --out runs/ssl-lrnan
REC-ssl-workersneg ~ num-workers|num_workers ~ ~ recipe ssl --data data/mini {SSL} --num-workers -1
    --out runs/ssl-wneg
REC-rcdm-budget-neg ~ time-budget ~ needs=rroot ~ recipe rcdm --runs runs/rroot --data data/mini --preset tiny
    --steps 2 --batch-size 4 --save-every 1 --num-workers 0 --no-progress --time-budget-s -5
    --only rcdm-cifar10-vicreg-projector
PACK-outfile ~ afile.txt ~ needs=rroot ~ {PACK} --out out/afile.txt
PACK-maxmb-nan ~ max-mb ~ needs=rroot ~ {PACK} --max-mb nan --out out/pack3
PACK-demo-notimg ~ afile.txt ~ needs=rroot ~ {PACK} --demo-images out/afile.txt --out out/pack9
PACK-demo-missing ~ nope.jpg ~ needs=rroot ~ {PACK} --demo-images nope.jpg --out out/pack10
IMG-fifo-arg ~ fifo.jpg ~ t=60 ~ sample --model {BB} --images data/fifo.jpg --num-samples 1 --steps 2
    --out out/i-fifo
SAM-device-tpu ~ tpu ~ ~ sample --model {BB} {S1} --device tpu --out out/s-tpu
SAM-device-cuda ~ cuda ~ ~ sample --model {BB} {S1} --device cuda --out out/s-cuda
SAM-device-cuda9 ~ cuda ~ ~ sample --model {BB} {S1} --device cuda:9 --out out/s-cuda9
DEMO-guidance-abc ~ guidance ~ ~ demo --bundle bundles/bg-abc --out out/d-abc
DEMO-guidance-1e30 ~ guidance ~ ~ demo --bundle bundles/bg-huge --out out/d-huge
DEMO-card-width-bomb ~ width ~ ~ demo --bundle bundles/bd-width --out out/d-width
SAM-guidance-1e30 ~ guidance ~ ~ sample --model {BB} {CAT} --num-samples 2 --steps 4 --guidance 1e30
    --out out/s-g1e30
SAM-guidance-neg ~ guidance ~ ~ sample --model {BB} {CAT} --num-samples 2 --steps 4 --guidance -50
    --out out/s-gneg
"""


def simple(words: str, opts: str, cmd: str) -> tuple:
    """One SIMPLE row: the command must be refused (exit 2, one error line naming `words`)."""
    run_kw, check_kw = {}, {}
    for opt in opts.split():
        if opt.startswith("t="):
            run_kw["timeout"] = int(opt[2:])
        elif opt.startswith("needs="):
            baseline(opt[6:])
        elif opt == "forbid":  # the hub token must never be printed
            check_kw["forbid"] = (TOKEN,)
        elif opt == "nonet":  # no network: the hub endpoint is a closed local port
            run_kw["env"] = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}
        elif opt == "notoffline":  # refused for the model itself, before an upload is tried
            check_kw["not_words"] = ("offline",)
    fields = {"BB": BB, "S1": S1, "CAT": CAT, "CATDOG": CATDOG, "SSL": SSL, "MANIP": MANIP, "PACK": PACK}
    cmd = cmd.format(**fields, TOKEN=TOKEN, WORK=WORK, PORT=free_port())
    return refused(r(cmd, **run_kw), *words.split(), **check_kw)


PUSH_API = """
import sys
from pathlib import Path
from rcdm import hub
from rcdm.errors import RCDMError
class FakeApi:  # records what would be published
    def __init__(self):
        self.calls = []
    def create_repo(self, repo_id, **kw):
        self.calls.append("create_repo")
        return "https://huggingface.co/" + repo_id
    def upload_folder(self, *, repo_id, folder_path, **kw):
        self.calls.append("upload " + ",".join(sorted(p.name for p in Path(folder_path).iterdir())))
for m in sys.argv[1:]:
    api = FakeApi()
    try:
        hub.push(Path(m), "me/test", api=api)
        print(m, "ACCEPTED", api.calls)
    except Exception as e:
        late = any(c.startswith("upload") for c in api.calls)
        kind = "LATE" if late else "REFUSED" if isinstance(e, RCDMError) else "CRASHED"
        print(m, kind, type(e).__name__, (str(e).splitlines() or [""])[0][:100])
"""


def cli_probes():
    lines = SIMPLE.replace("\n    ", " ").strip().splitlines()
    for pid, words, opts, cmd in (tuple(x.strip() for x in line.split("~")) for line in lines):
        yield pid, lambda w=words, o=opts, c=cmd: simple(w, o, c)

    def port_busy():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            return refused(r(f"app --port {s.getsockname()[1]}", timeout=90), "port")

    def device_cuda():
        kind, got = cuda_app()
        why = "with --device cuda and no GPU the app started serving"
        return refused(got, "cuda") if kind == "exited" else row(False, 124, "rcdm app: serving ...", why)

    def device_cuda_use():
        kind, got = cuda_app()
        why = "the app refused --device cuda at start (APP-device-cuda): no first use"
        return row(True, "-", "", why) if kind == "exited" else page(got)

    def push_api():
        p = py(PUSH_API, "mdl/pickle_named_st", "mdl/dropout5", "mdl/sample1")
        lines = [x for x in p.stdout.splitlines() if x.startswith("mdl/")]
        verdicts = {x.split()[0]: x.split()[1] for x in lines}
        ok = p.returncode == 0 and len(verdicts) == 3 and set(verdicts.values()) == {"REFUSED"}
        line = "; ".join(f"{m[4:]}: {v}" for m, v in verdicts.items()) or last_line(p)
        return row(ok, p.returncode, line, " / ".join(lines) or internal(p))

    yield "APP-port-busy", port_busy
    yield "APP-device-cuda", device_cuda
    yield "APP-device-cuda-use", device_cuda_use
    yield "PUSH-unloadable-api", push_api
    supervised = "export $M/rcdm-cifar10-supervised --out out/exp1"
    yield "EXP-out-userdir", lambda: unchanged(f"export {BB} --out out/userdir", "out/userdir")
    yield "EXP-over-previous", lambda: baseline("exp1") or unchanged(supervised, "out/exp1")
    yield "EXP-diskfull", lambda: diskfull("exp", f"export {BB} --out OUT", "exp")
    sam = f"sample --model {BB} --images data/imgs8 --num-samples 4 --steps 2 --out OUT"
    yield "SAM-diskfull", lambda: diskfull("sam", sam, "s")
    variance = f"analyze variance --model {BB} {CAT} --num-samples 2 --steps 2 --out"
    yield "ANA-diskfull", lambda: diskfull("ana", f"{variance} OUT", "a")
    faith = f"evaluate faithfulness --model {BB} --num-samples 1 --steps 2"
    yield "EVA-diskfull", lambda: diskfull("eva", f"{faith} --images data/imgs8 --out OUT", "f.json")
    faith2 = f"{faith} {CATDOG} --out out/f2.json"
    yield "EVA-rerun-same-out", lambda: baseline("f2") or unchanged(faith2, "out/f2.json", "out/f2.md")
    interp = f"analyze interpolate --model {BB} {CATDOG} --num-samples 1 --num-steps 2 --steps 2"
    yield "ANA-over-previous", lambda: baseline("ana1") or unchanged(f"{interp} --out out/ana1", "out/ana1")
    yield "ANA-userdir", lambda: unchanged(f"{variance} out/myphotos", "out/myphotos")
    yield "ANA-into-sample-out", lambda: baseline("b0") or unchanged(f"{variance} out/b0", "out/b0")

    def ana_concurrent():
        a = start(f"exec {PY} -m rcdm.cli analyze variance --model {BB} --images data/imgs8 --num-samples 2"
                  " --steps 4 --out out/mix")  # fmt: skip
        time.sleep(0.5)
        b = r(f"analyze interpolate --model {BB} {CATDOG} --num-samples 1 --steps 4 --out out/mix")
        a = finish(a)
        loser = a if a.returncode else b
        ok = sorted([a.returncode, b.returncode]) == [0, 2] and refused(loser)[0] == "good"
        ok = ok and not (internal(a) or internal(b))
        line = f"A (variance): {last_line(a)[:75]} / B (interpolate): {last_line(b)[:75]}"
        return row(ok, f"{a.returncode} / {b.returncode}", line, "" if ok else "not one run and one refusal")

    def adv_eps2():
        p = r(f"analyze adversarial --model {BB} {CATDOG} --num-samples 1 --steps 2 --eps 2 --pgd-steps 1"
              " --out out/aa2")  # fmt: skip
        if p.returncode != 0:
            return refused(p, "eps")
        warned = [x for x in p.stderr.splitlines() if "eps" in x.lower() and "warn" in x.lower()]
        note = "accepted with a warning" if warned else "--eps 2 taken as an L-inf radius of 510/255, no word"
        return row(bool(warned), 0, last_line(p), note)

    def man_cache_nan():
        baseline("mcache")
        for f in (WORK / "out" / "mcache").glob("*.safetensors"):
            ok_or_setup(py(POISON, str(f), "all"), "poisoning the cache")
        p = r(f"{MANIP} --cache out/mcache --out out/am8")
        if p.returncode != 0:
            return refused(p, "cache|nan|non-finite")
        results = WORK / "out" / "am8" / "results.json"
        text = results.read_text() if results.is_file() else "NaN"
        ok = "cache" in p.stderr.lower() and not any(t in text for t in ("NaN", "Infinity"))
        return row(ok, 0, last_line(p), "rebuilt with a warning" if ok else "the NaN cache was used as is")

    def fcache_nan():
        baseline("fc")
        ok_or_setup(py(POISON, str(WORK / "out" / "fc.safetensors"), "one"), "poisoning the cache")
        p = r(f"{FCACHE} --feature-cache out/fc.safetensors --out runs/fc2")
        if p.returncode != 0:
            return refused(p, "fc.safetensors|feature-cache|cache")
        ok = "fc.safetensors" in p.stderr
        return row(ok, 0, last_line(p), "warned" if ok else "one NaN in --feature-cache not detected on read")

    def oneclass(out: str, extra: str = ""):
        p = r(f"recipe ssl --data data/rec-oneclass {SSL} {extra} --out runs/{out}")
        if p.returncode != 0:
            return refused(p, "class")
        card_file = WORK / "runs" / out / "encoder" / "card.json"
        card = json.loads(card_file.read_text()) if card_file.is_file() else {}
        smoke, knn = card.get("smoke"), card.get("knn_accuracy")
        note = "card marked smoke" if smoke is True else f"accepted as real: smoke {smoke}, k-NN {knn}"
        return row(smoke is True, 0, last_line(p), note)

    def dangling():
        p = r(f"sample --model {BB} --images data/dangling --num-samples 1 --steps 2 --out out/i-dangling")
        ok = "gone.jpg" in p.stdout + p.stderr and p.returncode in (0, 2) and not internal(p)
        note = "named it" if ok else "the dangling symlink gone.jpg is not reported"
        return row(ok, p.returncode, last_line(p), note)

    yield "ANA-concurrent", ana_concurrent
    yield "ANA-adv-eps-2", adv_eps2
    yield "ANA-man-cache-nan", man_cache_nan
    yield "TRN-fcache-nan", fcache_nan
    yield "REC-ssl-oneclass", lambda: oneclass("ssl-oneclass")
    yield "REC-ssl-oneclass-sup", lambda: oneclass("ssl-oneclass-sup", "--objective supervised")
    yield "IMG-dangling", dangling


# --- main ---------------------------------------------------------------------------------------------------


def esc(text, limit: int | None = 160) -> str:
    return str(text).replace("\n", " ").replace("|", "\\|")[:limit]


def unmount_under(path: Path) -> None:
    for line in Path("/proc/mounts").read_text().splitlines():
        if line.split()[1].startswith(f"{path}/"):
            subprocess.run(["umount", "-l", line.split()[1]], capture_output=True)


def main() -> int:
    global WORK
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, help="scratch folder (emptied first; default: a new temp dir)")
    ap.add_argument("--only", default="", help="comma-separated probe ids")
    args = ap.parse_args()
    WORK = (args.work or Path(tempfile.mkdtemp(prefix="rcdm-probes2-"))).resolve()
    if args.work and WORK.exists():
        unmount_under(WORK)
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True, exist_ok=True)
    cli, apps = list(cli_probes()), list(app_probes())
    only = set(filter(None, args.only.split(",")))
    if unknown := only - {pid for pid, _ in cli + apps}:
        ap.error(f"unknown probe ids: {sorted(unknown)}")
    build_fixtures(WORK)
    print(f"work folder: {WORK}", file=sys.stderr)
    print("| id | verdict | exit | last line | note |\n|---|---|---:|---|---|", flush=True)
    counts: dict[str, int] = {}

    def report(pid: str, fn, *a) -> None:
        CURRENT[0], t0 = pid, time.monotonic()
        try:
            verdict, rc, line, note = fn(*a)
        except Exception as e:  # a probe's own set-up failed: a row that says so, then the rest
            verdict, rc, line, note = "bad", "-", "", f"probe set-up failed: {type(e).__name__}: {e}"
        counts[verdict] = counts.get(verdict, 0) + 1
        note = "; ".join(filter(None, [note, f"{time.monotonic() - t0:.0f} s"]))
        print(f"| {pid} | {verdict} | {rc} | {esc(line)} | {esc(note, None)} |", flush=True)

    try:
        for pid, fn in cli:
            if not only or pid in only:
                report(pid, fn)
        if todo := [(pid, fn) for pid, fn in apps if not only or pid in only]:
            CURRENT[0] = "app-start"
            app = App("", "main")
            try:
                if not app.wait(120):
                    raise SetupError(f"rcdm app did not start: {last_line(app.output())}")
                examples = app.choices("samples", "example")
                ctx = {
                    "cat": "cat.jpg" if "cat.jpg" in examples else examples[0],
                    "label": app.choices("samples", "models")[0],
                    "fast": next(c for c in app.choices("samples", "preset") if c.startswith("fast")),
                }
                for pid, fn in todo:
                    report(pid, fn, app, ctx)
            except Exception as e:  # the app did not start, or its API changed past what the probes expect
                for pid, _ in todo:
                    report(pid, lambda e=e: row(False, "-", "", f"{type(e).__name__}: {e}"))
            finally:
                app.stop()
    finally:
        unmount_under(WORK)
    print("\n" + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())))
    return 1 if counts.get("bad") else 0


if __name__ == "__main__":
    raise SystemExit(main())
