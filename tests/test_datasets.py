"""Tests of model_extraction.datasets, on tiny files written in each real format.

Nothing here touches the network: an autouse fixture lets urllib reach only file:// URLs and
127.0.0.1. Tests on the real copies in ../shared/data (or $MODEL_EXTRACTION_DATA) skip when
those are absent.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import shutil
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from rich.table import Table
from tiny_dataset_files import (
    tar_directory,
    write_cifar_batches,
    write_image_tree,
    write_mnist,
    write_svhn,
)

from model_extraction.datasets import (
    CACHE_ENV,
    DATA_ENV,
    Dataset,
    DatasetCorruptError,
    DatasetNotFoundError,
    checksums,
    cifar,
    dataset_report,
    folder,
    format_report,
    idx,
    load_dataset,
    locations,
    registry,
    safe_pickle,
)
from model_extraction.datasets.checksums import Digest
from model_extraction.datasets.mnist import MNIST
from model_extraction.datasets.svhn import SVHN

REPO = Path(__file__).resolve().parents[1]
_REAL_DATA_ENV = os.environ.get(DATA_ENV)
REPORT_KEYS = {"name", "split", "count", "verified", "source"}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A fresh cache per test, no data env var, no system dirs, and no network."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setattr(locations, "SYSTEM_DATA_DIRS", ())
    real_urlopen = urllib.request.urlopen

    def local_only(url, *args, **kwargs):
        full = url.full_url if isinstance(url, urllib.request.Request) else url
        parts = urllib.parse.urlsplit(full)
        if parts.scheme != "file" and parts.hostname != "127.0.0.1":
            raise AssertionError(f"a test tried to reach the network: {full}")
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", local_only)
    return cache


@pytest.fixture
def no_digests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the canonical digests, so tiny files load (unverified)."""
    monkeypatch.setattr(checksums, "KNOWN_DIGESTS", {})


def _trust(monkeypatch: pytest.MonkeyPatch, dataset: str, digests: dict[str, str]) -> None:
    for name, hexdigest in digests.items():
        monkeypatch.setitem(checksums.KNOWN_DIGESTS, (dataset, name), Digest("sha256", hexdigest))


def _shared_data() -> Path | None:
    for candidate in (_REAL_DATA_ENV, REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "mnist").is_dir():
            return Path(candidate)
    return None


@pytest.fixture
def shared_data() -> Path:
    path = _shared_data()
    if path is None:
        pytest.skip("no real dataset copies ($MODEL_EXTRACTION_DATA or ../shared/data)")
    return path


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One cache for all real-data tests, so CIFAR-10 is extracted and decoded once; removed
    afterwards (the extracted tree is 60,000 files)."""
    path = tmp_path_factory.mktemp("real-cache")
    yield path
    shutil.rmtree(path, ignore_errors=True)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = self.server.files.get(self.path)  # type: ignore[attr-defined]
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path.startswith("/broken/"):  # announce everything, send half, hang up
            body = body[: len(body) // 2]
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A file server on 127.0.0.1: yields its base URL and the path -> bytes it serves."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.files = {}  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", server.files  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- IDX format


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    )
)
def test_idx_round_trip(array: np.ndarray) -> None:
    data = idx.encode_idx(array)
    for blob in (data, gzip.decompress(gzip.compress(data))):
        back = idx.parse_idx(blob)
        assert back.shape == array.shape and back.dtype == array.dtype.newbyteorder("=")
        np.testing.assert_array_equal(back, array)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_idx_any_truncation_is_refused(data: st.DataObject) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    blob = idx.encode_idx(array)
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(DatasetCorruptError):
        idx.parse_idx(blob[:cut])
    with pytest.raises(DatasetCorruptError, match="does not match"):
        idx.parse_idx(blob + b"\0")


def test_idx_files_raw_and_gzip(tmp_path: Path) -> None:
    array = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    for name in ("a.idx", "a.idx.gz"):
        idx.write_idx(tmp_path / name, array)
        np.testing.assert_array_equal(idx.read_idx(tmp_path / name), array)
    assert (tmp_path / "a.idx.gz").read_bytes()[:2] == b"\x1f\x8b"
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01" + b"\0" * 8)
    with pytest.raises(DatasetCorruptError, match="not an IDX file"):
        idx.read_idx(tmp_path / "bad")


# --------------------------------------------------------------------------- MNIST family


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_tiny(tmp_path: Path, gz: bool, no_digests: None) -> None:
    images, labels, _ = write_mnist(tmp_path / "mnist", "test", n=5, gz=gz)
    d = load_dataset("mnist", "test", data_dir=tmp_path, download=False)
    assert (d.name, d.split, len(d), d.input_shape, d.num_classes) == (
        "mnist",
        "test",
        5,
        (1, 28, 28),
        10,
    )
    assert d.images.dtype == np.uint8 and d.labels.dtype == np.int64
    np.testing.assert_array_equal(d.images[:, 0], images)
    np.testing.assert_array_equal(d.labels, labels)
    assert d.source == str(tmp_path / "mnist") and d.verified is False


def test_mnist_verified_with_known_digests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, digests = write_mnist(tmp_path, "train", n=3)  # directly in the data dir
    _trust(monkeypatch, "fashion-mnist", digests)
    d = load_dataset("fashion_mnist", "train", data_dir=tmp_path, download=False)
    assert d.verified and d.name == "fashion-mnist" and d.classes[0] == "T-shirt/top"


def test_checksum_mismatch_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, digests = write_mnist(tmp_path / "mnist", "test", n=3)
    _trust(monkeypatch, "mnist", digests)
    monkeypatch.setitem(
        checksums.KNOWN_DIGESTS, ("mnist", "t10k-labels-idx1-ubyte"), Digest("sha256", "0" * 64)
    )
    with pytest.raises(DatasetCorruptError, match="sha256 mismatch") as info:
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)
    assert info.value.path == tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    assert isinstance(info.value, ValueError)


def test_canonical_digests_refuse_other_content(tmp_path: Path) -> None:
    write_mnist(tmp_path, "test", n=3)  # the real table: tiny files are not MNIST
    with pytest.raises(DatasetCorruptError, match="not the canonical one"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_idx_file(tmp_path: Path, gz: bool, no_digests: None) -> None:
    write_mnist(tmp_path, "test", n=4, gz=gz)
    path = tmp_path / ("t10k-images-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DatasetCorruptError, match="truncated") as info:
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)
    assert info.value.path == path and str(path) in str(info.value)


def test_idx_wrong_layout(tmp_path: Path, no_digests: None) -> None:
    write_mnist(tmp_path, "test", n=4, gz=False)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    shutil.copy(labels, tmp_path / "t10k-images-idx3-ubyte")  # labels where images belong
    with pytest.raises(DatasetCorruptError, match=r"expected uint8 images \(N, H, W\)"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)


# --------------------------------------------------------------------------- lookup order


def test_lookup_order(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, no_digests: None
) -> None:
    explicit, env, system = tmp_path / "explicit", tmp_path / "env", tmp_path / "system"
    write_mnist(explicit / "mnist", n=2)
    write_mnist(env, n=3)  # files directly in the directory
    write_mnist(cache / "mnist", n=4)
    write_mnist(system / "MNIST" / "raw", n=5, gz=False)  # torchvision's layout
    monkeypatch.setenv(DATA_ENV, str(env))
    monkeypatch.setattr(locations, "SYSTEM_DATA_DIRS", (system,))

    def n_loaded(**kwargs: object) -> int:
        return len(load_dataset("mnist", "test", download=False, **kwargs))  # type: ignore[arg-type]

    assert n_loaded(data_dir=explicit) == 2  # data_dir beats the env var
    assert n_loaded() == 3  # env var beats the cache
    monkeypatch.delenv(DATA_ENV)
    assert n_loaded() == 4  # cache beats system locations
    shutil.rmtree(cache / "mnist")
    d = load_dataset("mnist", "test", download=False)
    assert len(d) == 5 and d.source == str(system / "MNIST" / "raw")


def test_missing_dataset_message(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = tmp_path / "env"
    env.mkdir()
    monkeypatch.setenv(DATA_ENV, str(env))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", "test", data_dir=tmp_path / "nowhere", download=False)
    err = info.value
    message = str(err)
    assert isinstance(err, FileNotFoundError)
    for needle in (
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        str(tmp_path / "nowhere"),
        str(env),
        str(cache),
        "data_dir=",
        DATA_ENV,
        "download=True",
        "does not exist",
        "not attempted",
    ):
        assert needle in message, needle
    assert "train-images" not in message
    assert err.name == "mnist" and err.split == "test" and len(err.missing) == 2
    assert tmp_path / "nowhere" / "mnist" in err.searched


def test_missing_message_names_the_one_missing_file(tmp_path: Path) -> None:
    write_mnist(tmp_path / "mnist", "test", n=2)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="lacks t10k-labels-idx1-ubyte.gz") as info:
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)
    assert "lacks t10k-images" not in str(info.value)


def test_unknown_name_or_split() -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("digits", "validation")


# --------------------------------------------------------------------------- downloads


def test_download_falls_back_to_second_mirror(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, http_server: tuple
) -> None:
    base, served = http_server
    images, labels, digests = write_mnist(tmp_path / "src", "test", n=3)
    _trust(monkeypatch, "mnist", digests)
    for path in (tmp_path / "src").iterdir():
        served[f"/mnist/{path.name}"] = path.read_bytes()
    mirrors = ("http://127.0.0.1:1/", f"{base}/mnist/")  # the first refuses connections
    monkeypatch.setitem(registry.SOURCES, "mnist", dataclasses.replace(MNIST, urls=mirrors))
    d = load_dataset("mnist", "test", progress=True)
    assert d.verified and d.source == str(cache / "mnist")
    np.testing.assert_array_equal(d.images[:, 0], images)
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    assert len(load_dataset("mnist", "test", download=False)) == 3  # now in the cache


def test_download_cut_midway_leaves_nothing(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, http_server: tuple
) -> None:
    base, served = http_server
    write_mnist(tmp_path / "src", "test", n=50, gz=False)
    for path in (tmp_path / "src").iterdir():
        served[f"/broken/{path.name}.gz"] = gzip.compress(path.read_bytes())
    broken = dataclasses.replace(MNIST, urls=(f"{base}/broken/",))
    monkeypatch.setitem(registry.SOURCES, "mnist", broken)
    with pytest.raises(DatasetNotFoundError, match="connection closed after"):
        load_dataset("mnist", "test", progress=False)
    assert list((cache / "mnist").iterdir()) == []  # no partial file, no temp file


def test_download_failing_mid_read_leaves_nothing(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Dying(io.BytesIO):
        headers = {"Content-Length": "4096"}

        def read(self, n: int = -1) -> bytes:
            if self.tell() >= 1024:
                raise ConnectionResetError("peer reset")
            return super().read(1024)

        def __enter__(self) -> Dying:
            return self

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Dying(b"\x1f\x8b" * 2048))
    with pytest.raises(DatasetNotFoundError, match="peer reset"):
        load_dataset("svhn", "test", progress=False)
    assert list((cache / "svhn").iterdir()) == []


def test_download_with_bad_content_is_refused(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, http_server: tuple
) -> None:
    base, served = http_server
    write_mnist(tmp_path / "src", "test", n=3)  # real digest table: content is "wrong"
    for path in (tmp_path / "src").iterdir():
        served[f"/m/{path.name}"] = path.read_bytes()
    monkeypatch.setitem(registry.SOURCES, "mnist", dataclasses.replace(MNIST, urls=(f"{base}/m/",)))
    with pytest.raises(DatasetCorruptError, match="sha256 mismatch") as info:
        load_dataset("mnist", "test", progress=False)
    assert info.value.path == cache / "mnist" / "t10k-images-idx3-ubyte.gz"
    assert f"download from {base}/m/" in str(info.value)
    assert pickle.loads(pickle.dumps(info.value)).path == info.value.path
    assert list((cache / "mnist").iterdir()) == []


def test_download_from_file_url(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, no_digests: None
) -> None:
    x, y = write_svhn(tmp_path / "mirror" / "train_32x32.mat", n=3)
    mirror = (tmp_path / "mirror").as_uri() + "/"
    monkeypatch.setitem(registry.SOURCES, "svhn", dataclasses.replace(SVHN, urls=(mirror,)))
    d = load_dataset("svhn", "train", progress=False)
    assert len(d) == 3 and d.source == str(cache / "svhn" / "train_32x32.mat")


def test_not_found_after_failed_download(monkeypatch: pytest.MonkeyPatch) -> None:
    dead = dataclasses.replace(MNIST, urls=("http://127.0.0.1:1/",))
    monkeypatch.setitem(registry.SOURCES, "mnist", dead)
    with pytest.raises(DatasetNotFoundError, match="failed: could not download"):
        load_dataset("mnist", "train", progress=False)


# --------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("py2", [True, False])
def test_load_cifar_batches(tmp_path: Path, py2: bool, no_digests: None) -> None:
    data, labels = write_cifar_batches(tmp_path / "cifar-10-batches-py", "train", n=3, py2=py2)
    d = load_dataset("cifar10", "train", data_dir=tmp_path, download=False)
    assert len(d) == 15 and d.input_shape == (3, 32, 32) and d.classes[0] == "airplane"
    # row layout: 1024 red, then green, then blue values, each row-major 32x32
    assert d.images[4, 1, 2, 3] == data[4, 1024 + 2 * 32 + 3]
    np.testing.assert_array_equal(d.labels, labels)
    assert d.source == str(tmp_path / "cifar-10-batches-py")


def test_cifar_batch_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar_batches(tmp_path, "test", n=2)
    md5 = hashlib.md5((tmp_path / "test_batch").read_bytes()).hexdigest()
    monkeypatch.setitem(checksums.KNOWN_DIGESTS, ("cifar10", "test_batch"), Digest("md5", md5))
    assert load_dataset("cifar10", "test", data_dir=tmp_path, download=False).verified
    monkeypatch.setitem(checksums.KNOWN_DIGESTS, ("cifar10", "test_batch"), Digest("md5", "0" * 32))
    with pytest.raises(DatasetCorruptError, match="md5 mismatch"):
        load_dataset("cifar10", "test", data_dir=tmp_path, download=False)


def test_restricted_unpickler_refuses_code(tmp_path: Path, no_digests: None) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()

    class Evil:
        def __reduce__(self) -> tuple:
            return (shutil.rmtree, (str(victim),))

    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(DatasetCorruptError, match="shutil.rmtree is not allowed"):
        load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    assert victim.is_dir()
    obj_array = pickle.dumps(np.array([1, "x"], dtype=object))
    with pytest.raises(DatasetCorruptError, match="refused"):
        safe_pickle.loads(obj_array)


def test_truncated_cifar_batch(tmp_path: Path, no_digests: None) -> None:
    write_cifar_batches(tmp_path, "test", n=3)
    batch = tmp_path / "test_batch"
    batch.write_bytes(batch.read_bytes()[:5000])
    with pytest.raises(DatasetCorruptError, match="test_batch"):
        load_dataset("cifar10", "test", data_dir=tmp_path, download=False)


def test_cifar_from_canonical_tarball(tmp_path: Path, cache: Path, no_digests: None) -> None:
    batches = tmp_path / "build" / "cifar-10-batches-py"
    data, labels = write_cifar_batches(batches, "test", n=3)
    write_cifar_batches(batches, "train", n=2)
    tarball = tar_directory(
        tmp_path / "build", tmp_path / "data" / "cifar10" / "cifar-10-python.tar.gz"
    )
    d = load_dataset("cifar10", "test", data_dir=tmp_path / "data", download=False)
    assert d.source == str(tarball) and len(d) == 3
    np.testing.assert_array_equal(d.images.reshape(3, -1), data)
    extracted = list((cache / "extracted").iterdir())
    assert len(extracted) == 1 and (extracted[0] / "cifar-10-batches-py" / "test_batch").is_file()
    assert len(load_dataset("cifar10", "train", data_dir=tmp_path / "data")) == 10


def _cifar_jpeg_tarball(tmp_path: Path, classes: tuple[str, ...] = cifar.CIFAR10_CLASSES) -> Path:
    tree = tmp_path / "tree"
    per_class = {c: 1 for c in classes}
    write_image_tree(tree, {"train": per_class, "test": per_class}, size=(32, 32), suffix=".jpg")
    return tar_directory(tree, tmp_path / "data" / "cifar10-jpeg" / "cifar10_jpg.tar.gz")


def test_cifar_from_jpeg_tarball(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tarball = _cifar_jpeg_tarball(tmp_path)
    sha = hashlib.sha256(tarball.read_bytes()).hexdigest()
    monkeypatch.setitem(checksums.KNOWN_DIGESTS, ("cifar10", tarball.name), Digest("sha256", sha))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    d = load_dataset("cifar10", "test", download=False)
    assert (len(d), d.input_shape, d.verified, d.source) == (10, (3, 32, 32), True, str(tarball))
    np.testing.assert_array_equal(d.labels, np.arange(10))
    with Image.open(tmp_path / "tree" / "test" / "bird" / "0000.jpg") as im:
        np.testing.assert_array_equal(d.images[2], np.asarray(im.convert("RGB")).transpose(2, 0, 1))
    assert list((cache / "decoded").rglob("test.images.npy"))

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("second load must come from the decoded cache")

    monkeypatch.setattr(cifar, "extract_tarball", boom)
    monkeypatch.setattr(cifar, "load_folder", boom)
    again = load_dataset("cifar10", "test", download=False)
    np.testing.assert_array_equal(again.images, d.images)
    assert again.verified


def test_cifar_jpeg_tarball_wrong_layout(tmp_path: Path, no_digests: None) -> None:
    _cifar_jpeg_tarball(tmp_path, classes=("cats", "dogs"))
    with pytest.raises(DatasetCorruptError, match="wrong layout: classes"):
        load_dataset("cifar10", "test", data_dir=tmp_path / "data", download=False)


def test_truncated_tarball_extracts_nothing(tmp_path: Path, cache: Path, no_digests: None) -> None:
    tarball = _cifar_jpeg_tarball(tmp_path)
    tarball.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    with pytest.raises(DatasetCorruptError, match="truncated or corrupt archive") as info:
        load_dataset("cifar10", "test", data_dir=tmp_path / "data", download=False)
    assert info.value.path == tarball
    assert list((cache / "extracted").iterdir()) == []  # the temp dir is gone too


# --------------------------------------------------------------------------- SVHN


def test_load_svhn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "svhn" / "test_32x32.mat"
    x, y = write_svhn(path, n=5)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setitem(checksums.KNOWN_DIGESTS, ("svhn", path.name), Digest("md5", md5))
    d = load_dataset("svhn", "test", data_dir=tmp_path, download=False)
    assert (len(d), d.input_shape, d.verified, d.source) == (5, (3, 32, 32), True, str(path))
    assert d.labels[0] == 0  # label 10 means the digit 0
    np.testing.assert_array_equal(d.labels, y[:, 0] % 10)
    assert d.images[3, 2, 7, 11] == x[7, 11, 2, 3]  # X is (H, W, C, N)


def test_svhn_mismatch_and_truncation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "train_32x32.mat"
    write_svhn(path, n=4)
    with pytest.raises(DatasetCorruptError, match="md5 mismatch"):  # the canonical md5
        load_dataset("svhn", "train", data_dir=tmp_path, download=False)
    monkeypatch.setattr(checksums, "KNOWN_DIGESTS", {})
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(DatasetCorruptError, match="train_32x32.mat"):
        load_dataset("svhn", "train", data_dir=tmp_path, download=False)


# --------------------------------------------------------------------------- image folders


def test_image_folder_mixed_formats(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    write_image_tree(root, {"train": {"cat": 2, "dog": 1}}, suffix=".png")
    write_image_tree(root, {"train": {"emu": 2}, "test": {"cat": 1, "emu": 1}}, suffix=".jpg")
    (root / "train" / "cat" / "notes.txt").write_text("ignored")
    train = load_dataset(f"folder:{root}", "train")
    test = load_dataset(f"folder:{root}", "test")
    assert train.classes == test.classes == ("cat", "dog", "emu")
    np.testing.assert_array_equal(train.labels, [0, 0, 1, 2, 2])
    np.testing.assert_array_equal(test.labels, [0, 2])  # same index for a class in both splits
    assert train.input_shape == (3, 5, 6) and train.verified is False
    assert train.name == f"folder:{root}" and train.source == str(root)


def test_image_folder_grey_and_cache(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "grey"
    write_image_tree(root, {"test": {"a": 2, "b": 2}}, mode="L", size=(4, 4))
    first = load_dataset(f"folder:{root}", "test")
    assert first.input_shape == (1, 4, 4)
    with Image.open(root / "test" / "b" / "0001.png") as im:
        np.testing.assert_array_equal(first.images[3, 0], np.asarray(im))

    def boom(paths: object) -> None:
        raise AssertionError("decoded again")

    with monkeypatch.context() as patch:  # (undo() would also undo the autouse isolation)
        patch.setattr(folder, "decode_images", boom)
        np.testing.assert_array_equal(load_dataset(f"folder:{root}", "test").images, first.images)
    write_image_tree(root, {"test": {"c": 1}}, mode="L", size=(4, 4))  # content changed
    assert len(load_dataset(f"folder:{root}", "test")) == 5
    assert len(list((cache / "decoded").iterdir())) == 2  # in the test's cache, not ~/.cache


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda r: write_image_tree(r, {"images": {"a": 1}}), "no train/ or test/"),
        (lambda r: (r / "train").mkdir(parents=True), "no class directories"),
        (lambda r: write_image_tree(r / "train", {"x": {"a": 1}}), "no images in any class"),
    ],
)
def test_image_folder_wrong_layout(tmp_path: Path, make, match: str) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    make(root)
    with pytest.raises(DatasetCorruptError, match=match):
        load_dataset(f"folder:{root}", "train")


def test_image_folder_stray_image_and_sizes(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    write_image_tree(root, {"train": {"a": 1, "b": 1}}, size=(4, 4))
    shutil.copy(root / "train" / "a" / "0000.png", root / "train" / "loose.png")
    with pytest.raises(DatasetCorruptError, match="image directly in train/"):
        load_dataset(f"folder:{root}", "train")
    (root / "train" / "loose.png").unlink()
    Image.new("RGB", (5, 4)).save(root / "train" / "b" / "0001.png")
    with pytest.raises(DatasetCorruptError, match="same size") as info:
        load_dataset(f"folder:{root}", "train")
    assert info.value.path == root / "train" / "b" / "0001.png"
    (root / "train" / "b" / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DatasetCorruptError, match="cannot decode"):
        load_dataset(f"folder:{root}", "train")


def test_image_folder_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'absent'}")
    write_image_tree(tmp_path / "t", {"train": {"a": 1}})
    with pytest.raises(DatasetNotFoundError, match="no test/ directory"):
        load_dataset(f"folder:{tmp_path / 't'}", "test")


# --------------------------------------------------------------------------- digits, Dataset


def test_digits_always_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV, "/nonexistent")
    train = load_dataset("digits", "train", download=False)
    test = load_dataset("digits", "test", download=False)
    assert (len(train), len(test)) == (1500, 297)
    assert train.input_shape == (1, 8, 8) and train.pixel_max == 16
    assert train.verified and train.source == "scikit-learn"
    assert int(train.images.max()) == 16 and train.num_classes == 10


def test_dataset_api() -> None:
    d = load_dataset("digits", "test")
    x = d.to_float()
    assert x.dtype == np.float32 and x.shape == (297, 1, 8, 8) and x.min() >= 0 and x.max() == 1
    assert np.allclose(x, d.images / 16)
    flat = d.flat()
    assert flat.dtype == np.float64 and flat.shape == (297, 64)
    xt, yt = d.to_tensors()
    assert xt.dtype == torch.float32 and yt.dtype == torch.int64 and xt.shape == (297, 1, 8, 8)
    small = d.subset(np.arange(10))
    assert len(small) == 10 and small.classes == d.classes and small.source == d.source
    assert len(d.subset(d.labels == 3)) == int((d.labels == 3).sum())
    assert len(d.subset(slice(5, 7))) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.name = "x"  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        d.images[0, 0, 0, 0] = 1


def test_dataset_validation() -> None:
    images = np.zeros((2, 1, 2, 2), np.uint8)
    ok = {"name": "t", "split": "test", "classes": ("a", "b"), "source": "x", "verified": False}
    with pytest.raises(ValueError, match="labels must lie"):
        Dataset(images=images, labels=np.array([0, 2]), pixel_max=255, **ok)
    with pytest.raises(ValueError, match="uint8"):
        Dataset(images=images.astype(np.float32), labels=np.array([0, 1]), pixel_max=255, **ok)
    with pytest.raises(ValueError, match="exceed pixel_max"):
        Dataset(images=images + 20, labels=np.array([0, 1]), pixel_max=16, **ok)


# --------------------------------------------------------------------------- report


def test_dataset_report(tmp_path: Path, no_digests: None) -> None:
    write_mnist(tmp_path / "mnist", "test", n=4)
    write_mnist(tmp_path / "fashion-mnist", "test", n=4)
    gz = tmp_path / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:100])
    rows = dataset_report(tmp_path)
    assert len(rows) == 10 and all(set(r) >= REPORT_KEYS for r in rows)
    by = {(r["name"], r["split"]): r for r in rows}
    assert by["mnist", "test"] == {
        "name": "mnist",
        "split": "test",
        "count": 4,
        "verified": False,
        "source": str(tmp_path / "mnist"),
        "error": None,
    }
    assert by["mnist", "train"]["source"] is None and by["mnist", "train"]["count"] is None
    assert by["digits", "test"]["count"] == 297 and by["digits", "test"]["source"] == "scikit-learn"
    assert "truncated" in by["fashion-mnist", "test"]["error"]
    assert by["svhn", "train"]["source"] is None
    quick = {(r["name"], r["split"]): r for r in dataset_report(tmp_path, verify=False)}
    assert quick["mnist", "test"]["count"] == 4 and quick["mnist", "test"]["verified"] is False
    table = format_report(rows)
    assert isinstance(table, Table) and table.row_count == 10


# --------------------------------------------------------------------------- real copies


def test_real_mnist_and_fashion(shared_data: Path) -> None:
    d = load_dataset("mnist", "test", data_dir=shared_data, download=False)
    assert d.verified and d.images.shape == (10000, 1, 28, 28)
    expected = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert np.bincount(d.labels).tolist() == expected
    f = load_dataset("fashion-mnist", "test", data_dir=shared_data, download=False)
    assert f.verified and len(f) == 10000 and f.classes[-1] == "Ankle boot"


def test_real_report_without_verifying(shared_data: Path) -> None:
    rows = {(r["name"], r["split"]): r for r in dataset_report(shared_data, verify=False)}
    assert rows["mnist", "train"]["count"] == 60000
    assert rows["fashion-mnist", "test"]["count"] == 10000


@pytest.mark.slow
def test_real_cifar10_jpeg(
    shared_data: Path, real_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (shared_data / "cifar10-jpeg" / "cifar10_jpg.tar.gz").is_file():
        pytest.skip("no CIFAR-10 JPEG copy")
    monkeypatch.setenv(CACHE_ENV, str(real_cache))
    monkeypatch.setenv(DATA_ENV, str(shared_data))
    d = load_dataset("cifar10", "test", download=False)
    assert d.verified and d.images.shape == (10000, 3, 32, 32)
    assert np.bincount(d.labels).tolist() == [1000] * 10
    assert d.source.endswith("cifar10_jpg.tar.gz")
