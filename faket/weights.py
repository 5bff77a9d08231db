"""Where the VGG-19 weights come from, and what they are.

``--vgg-weights`` takes ``imagenet`` (default), ``random`` or a file path.
``imagenet`` is resolved in this order:

1. the file named by the environment variable ``FAKET_VGG19_WEIGHTS``;
2. torch hub's checkpoint cache, ``<torch hub dir>/checkpoints/vgg19-dcbb9e9d.pth``
   (where torchvision itself keeps it);
3. a download of torchvision's file into that cache when online, checked
   against the SHA-256 prefix in its name (``FAKET_NO_DOWNLOAD=1`` skips this,
   ``FAKET_VGG19_URL`` points at a mirror);
4. otherwise one error that says how to fetch it once (``faket weights fetch``).

Files are read with ``torch.load(..., weights_only=True)`` (nothing is
unpickled) and checked key by key before use.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import FaketInputError
from .io import atomic_path
from .provenance import cached_sha256
from .vgg import CONV_CHANNELS, CONV_INDICES, validate_state_dict

IMAGENET_FILENAME = "vgg19-dcbb9e9d.pth"
IMAGENET_URL = "https://download.pytorch.org/models/" + IMAGENET_FILENAME
ENV_WEIGHTS = "FAKET_VGG19_WEIGHTS"
ENV_URL = "FAKET_VGG19_URL"
ENV_NO_DOWNLOAD = "FAKET_NO_DOWNLOAD"
DOWNLOAD_TIMEOUT_S = 20.0


@dataclass
class Weights:
    """A checked VGG-19 features state dict and its identity for provenance.

    identity: ``{"kind": "imagenet"|"file"|"random", "path", "sha256", "seed", "via"}``.
    """

    state_dict: dict[str, torch.Tensor]
    identity: dict = field(default_factory=dict)

    @property
    def is_imagenet(self) -> bool:
        return self.identity.get("kind") == "imagenet"


def hub_checkpoint_path() -> Path:
    """Torch hub's cache path of torchvision's VGG-19 file (it need not exist)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILENAME


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load and check a VGG-19 state dict file (``weights_only=True``, CPU float32)."""
    p = Path(path)
    if not p.is_file():
        raise FaketInputError(f"weights file {p} does not exist: check the path")
    try:
        # mmap: tensors that are never used (torchvision's classifier) are never read
        state = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises many types for a bad file
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise FaketInputError(
            f"weights file {p} cannot be loaded as a weights-only state dict "
            f"({first}): give a torchvision VGG-19 .pth file"
        ) from None
    return validate_state_dict(state, str(p))


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """He-normal (fan-out, ReLU gain) convolutions with zero bias, from ``seed``.

    This is torchvision's VGG initialisation, the paper's FAKET_RANDOM ablation.
    """
    gen = torch.Generator().manual_seed(int(seed))
    out: dict[str, torch.Tensor] = {}
    c_in = 3
    for idx, c_out in zip(CONV_INDICES, CONV_CHANNELS):
        std = (2.0 / (c_out * 9)) ** 0.5
        out[f"features.{idx}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=gen) * std
        out[f"features.{idx}.bias"] = torch.zeros(c_out)
        c_in = c_out
    return out


def _hash_prefix(url: str) -> str | None:
    m = re.search(r"-([a-f0-9]{6,})\.", url.rsplit("/", 1)[-1])
    return m.group(1) if m else None


def fetch_imagenet(
    dest: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    progress: bool = False,
) -> Path:
    """Download torchvision's VGG-19 file to ``dest`` (default: the hub cache).

    The SHA-256 of the download must start with the hash in the file name
    (torch hub's convention); otherwise nothing is kept. Returns the path.
    Raises OSError / urllib errors when offline.
    """
    url = url or os.environ.get(ENV_URL) or IMAGENET_URL
    target = Path(dest) if dest is not None else hub_checkpoint_path()
    if target.is_dir():
        target = target / url.rsplit("/", 1)[-1]
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = _hash_prefix(url)
    h = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as resp, atomic_path(target) as tmp:
        total = int(resp.headers.get("Content-Length") or 0)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=target.name)
        with open(tmp, "wb") as f:
            while block := resp.read(1 << 20):
                f.write(block)
                h.update(block)
                if bar is not None:
                    bar.update(len(block))
        if bar is not None:
            bar.close()
        digest = h.hexdigest()
        if prefix and not digest.startswith(prefix):
            raise FaketInputError(
                f"download of {url} has SHA-256 {digest[:12]}..., expected "
                f"{prefix}...: the file is corrupt or not the right one"
            )
    return target


def _not_found_message(tried: list[str]) -> str:
    return (
        "ImageNet VGG-19 weights not found (tried " + "; ".join(tried) + "). "
        "On a machine with internet run `faket weights fetch` once, then copy "
        f"{IMAGENET_FILENAME} to {hub_checkpoint_path()} here or set {ENV_WEIGHTS}=/path/to/"
        f"{IMAGENET_FILENAME}; or run with --vgg-weights random (lower quality)"
    )


def resolve_weights(
    spec: str = "imagenet", *, seed: int = 0, download: bool | None = None, with_sha256: bool = True
) -> Weights:
    """Resolve ``--vgg-weights`` to a checked state dict.

    spec: ``imagenet``, ``random`` or a file path.
    seed: seed of the ``random`` weights.
    download: allow the download step (default: unless ``FAKET_NO_DOWNLOAD`` is set).
    """
    if spec == "random":
        return Weights(
            random_state_dict(seed),
            {"kind": "random", "seed": int(seed), "init": "he-normal fan-out, zero bias"},
        )
    if spec != "imagenet":
        path = Path(spec).expanduser()
        sd = load_weights_file(path)
        ident = {"kind": "file", "path": str(path.resolve())}
        if with_sha256:
            ident["sha256"] = cached_sha256(path)
        return Weights(sd, ident)

    tried: list[str] = []
    env = os.environ.get(ENV_WEIGHTS)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise FaketInputError(f"{ENV_WEIGHTS}={env} does not name a file: fix or unset it")
        return _imagenet_from(path, "env " + ENV_WEIGHTS, with_sha256)
    tried.append(f"${ENV_WEIGHTS} unset")
    cached = hub_checkpoint_path()
    if cached.is_file():
        return _imagenet_from(cached, "torch hub cache", with_sha256)
    tried.append(f"no {cached}")
    if download is None:
        download = not os.environ.get(ENV_NO_DOWNLOAD)
    if download:
        try:
            path = fetch_imagenet()
            return _imagenet_from(path, "download", with_sha256)
        except (OSError, urllib.error.URLError, TimeoutError) as err:
            tried.append(f"download failed ({getattr(err, 'reason', err)})")
    else:
        tried.append("download disabled")
    raise FaketInputError(_not_found_message(tried))


def _imagenet_from(path: Path, via: str, with_sha256: bool) -> Weights:
    sd = load_weights_file(path)
    ident = {"kind": "imagenet", "path": str(path.resolve()), "via": via}
    if with_sha256:
        ident["sha256"] = cached_sha256(path)
    return Weights(sd, ident)


def weights_status() -> dict:
    """Where ``imagenet`` would come from now, without loading or downloading."""
    env = os.environ.get(ENV_WEIGHTS)
    cached = hub_checkpoint_path()
    if env:
        return {"imagenet": "env", "path": env, "exists": Path(env).is_file()}
    if cached.is_file():
        return {"imagenet": "hub cache", "path": str(cached), "exists": True}
    return {"imagenet": "missing (download on first use when online)", "path": str(cached), "exists": False}
