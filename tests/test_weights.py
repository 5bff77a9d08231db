"""Weights resolution order, safe loading, download with hash check (local server)."""

from __future__ import annotations

import hashlib
import http.server
import os
import pickle
import threading
from pathlib import Path

import pytest
import torch

from faket.errors import FaketInputError
from faket.weights import (IMAGENET_FILENAME, hub_checkpoint_path, load_weights_file,
                           random_state_dict, resolve_weights)


def _save(sd, path: Path, scale: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v * scale for k, v in sd.items()}, path)
    return path


def test_hub_path_follows_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert hub_checkpoint_path() == tmp_path / "hub" / "checkpoints" / IMAGENET_FILENAME


def test_order_env_then_hub_cache_then_error(tmp_path, monkeypatch, test_weights):
    hub = _save(test_weights, hub_checkpoint_path(), 1.0)
    env_file = _save(test_weights, tmp_path / "env.pth", 2.0)
    monkeypatch.setenv("FAKET_VGG19_WEIGHTS", str(env_file))
    w = resolve_weights("imagenet")
    assert w.identity["via"] == "env FAKET_VGG19_WEIGHTS"
    assert torch.equal(w.state_dict["features.0.weight"], test_weights["features.0.weight"] * 2)
    monkeypatch.delenv("FAKET_VGG19_WEIGHTS")
    w = resolve_weights("imagenet")
    assert w.identity["via"] == "torch hub cache" and w.is_imagenet
    assert w.identity["sha256"] == hashlib.sha256(hub.read_bytes()).hexdigest()
    hub.unlink()
    with pytest.raises(FaketInputError, match="faket weights fetch"):
        resolve_weights("imagenet")


def test_env_var_naming_a_missing_file_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("FAKET_VGG19_WEIGHTS", str(tmp_path / "nope.pth"))
    with pytest.raises(FaketInputError, match="FAKET_VGG19_WEIGHTS"):
        resolve_weights("imagenet")


def test_explicit_file_and_random(tmp_path, test_weights):
    f = _save(test_weights, tmp_path / "mine.pth")
    w = resolve_weights(str(f))
    assert w.identity["kind"] == "file" and len(w.state_dict) == 32
    a, b, c = random_state_dict(0), random_state_dict(0), random_state_dict(1)
    assert torch.equal(a["features.5.weight"], b["features.5.weight"])
    assert not torch.equal(a["features.5.weight"], c["features.5.weight"])
    # He-normal fan-out: std sqrt(2 / (out * 9)); zero bias
    assert float(a["features.28.weight"].std()) == pytest.approx((2 / (512 * 9)) ** 0.5, rel=0.02)
    assert float(a["features.28.bias"].abs().max()) == 0.0


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_objects_are_not_loaded(tmp_path):
    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump({"features.0.weight": _Evil()}, f)
    with pytest.raises(FaketInputError, match="weights-only"):
        load_weights_file(bad)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(FaketInputError):
        load_weights_file(garbage)


@pytest.fixture
def http_dir(tmp_path):
    """A loopback HTTP server over a folder; yields (folder, base URL)."""
    root = tmp_path / "served"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_when_online_checks_hash(http_dir, monkeypatch, test_weights):
    root, url = http_dir
    tmp = _save(test_weights, root / "tmp.pth")
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    good = root / f"vgg19-{digest[:8]}.pth"
    tmp.rename(good)
    monkeypatch.delenv("FAKET_NO_DOWNLOAD")
    monkeypatch.setenv("FAKET_VGG19_URL", f"{url}/{good.name}")
    w = resolve_weights("imagenet")
    assert w.identity["via"] == "download"
    assert Path(w.identity["path"]) == hub_checkpoint_path()
    assert w.identity["sha256"] == digest
    # a file whose hash does not match its name is refused and not kept
    hub_checkpoint_path().unlink()
    bad = root / "vgg19-00000000.pth"
    bad.write_bytes(good.read_bytes())
    monkeypatch.setenv("FAKET_VGG19_URL", f"{url}/{bad.name}")
    with pytest.raises(FaketInputError, match="SHA-256"):
        resolve_weights("imagenet")
    assert not hub_checkpoint_path().exists()
    assert list(hub_checkpoint_path().parent.iterdir()) == []


def test_download_failure_gives_fetch_instructions(monkeypatch):
    monkeypatch.delenv("FAKET_NO_DOWNLOAD")
    monkeypatch.setenv("FAKET_VGG19_URL", "http://127.0.0.1:9/vgg19-dcbb9e9d.pth")
    with pytest.raises(FaketInputError, match="download failed"):
        resolve_weights("imagenet")
