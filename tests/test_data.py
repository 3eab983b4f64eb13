"""Data loaders: IDX (gzipped and raw), .npz, digits, binarisation, the real MNIST t10k split."""
from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastvae.vae import data
from fastvae.vae.data import Dataset, binarize, load_dataset, load_digits, load_idx, load_npz, read_idx

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist-t10k"


def _idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    magic = (0x0800 | array.ndim) if magic is None else magic
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write(path: Path, payload: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def _fake_mnist(root: Path, split: str, n: int, gz: bool, rng: np.random.Generator):
    root.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    _write(root / f"{split}-images-idx3-ubyte", _idx_bytes(images), gz)
    _write(root / f"{split}-labels-idx1-ubyte", _idx_bytes(labels), gz)
    return images, labels


@pytest.fixture
def rng() -> np.random.Generator:
    """numpy generator seeded from the per-test torch seed (conftest), so each test is repeatable."""
    return np.random.default_rng(torch.initial_seed() % 2**32)


# ---------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_load_idx_reads_gzipped_and_raw_files(tmp_path, rng, gz):
    images, labels = _fake_mnist(tmp_path, "t10k", 37, gz, rng)
    x, y = load_idx(tmp_path, "t10k")
    assert x.shape == (37, 784) and x.dtype == torch.float32
    assert y.shape == (37,) and y.dtype == torch.int64
    np.testing.assert_allclose(x.numpy(), images.reshape(37, -1) / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(y.numpy(), labels)
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_read_idx_checks_the_magic_number_and_size(tmp_path, rng):
    good = rng.integers(0, 256, size=(3, 4, 5), dtype=np.uint8)
    assert np.array_equal(read_idx(_write(tmp_path / "ok", _idx_bytes(good), False)), good)
    cases = {
        "notidx": (b"PK\x03\x04" + bytes(40), "not an IDX file"),
        "empty": (b"", "not an IDX file"),
        "wrongmagic": (_idx_bytes(good.reshape(3, 20)), "magic number 0x00000802, expected 0x00000803"),
        "float": (_idx_bytes(good, magic=0x0D03), "element type 0x0d"),
        "truncated": (_idx_bytes(good)[:-7], "file holds"),
        "header": (struct.pack(">I", 0x0803) + b"\x00\x00", "truncated IDX header"),
    }
    for name, (payload, match) in cases.items():
        path = _write(tmp_path / name, payload, False)
        with pytest.raises(ValueError, match=match):
            read_idx(path, magic=0x803)
    bad_gz = tmp_path / "bad.gz"
    bad_gz.write_bytes(b"this is not gzip data")
    with pytest.raises(ValueError, match="cannot decompress"):
        read_idx(bad_gz)


def test_load_idx_rejects_a_bad_images_file(tmp_path, rng):
    _fake_mnist(tmp_path, "t10k", 5, True, rng)
    # Labels where the images should be: a valid IDX file with the wrong magic number.
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes((tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(ValueError, match="magic number"):
        load_idx(tmp_path)


def test_load_idx_errors_name_the_missing_file_and_bad_split(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="directory"):
        load_idx(tmp_path / "nowhere")
    _fake_mnist(tmp_path, "t10k", 5, False, rng)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_idx(tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_idx(tmp_path, split="test")


@pytest.mark.parametrize("shape", [(0, 28, 28), (3, 0, 28)], ids=["no-images", "empty-images"])
def test_load_idx_with_no_images_names_the_file(tmp_path, rng, shape):
    _write(tmp_path / "t10k-images-idx3-ubyte", _idx_bytes(np.zeros(shape, dtype=np.uint8)), True)
    labels = rng.integers(0, 10, size=shape[0], dtype=np.uint8)
    _write(tmp_path / "t10k-labels-idx1-ubyte", _idx_bytes(labels), True)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: holds no images"):
        load_idx(tmp_path, "t10k")


def test_load_dataset_mnist_t10k_too_small_to_split(tmp_path, rng):
    _fake_mnist(tmp_path, "t10k", 40, False, rng)
    with pytest.raises(ValueError, match="40 images, too few"):
        load_dataset("mnist", data_dir=tmp_path)


def test_load_idx_rejects_mismatched_counts(tmp_path, rng):
    _fake_mnist(tmp_path, "t10k", 6, True, rng)
    labels = rng.integers(0, 10, size=4, dtype=np.uint8)
    _write(tmp_path / "t10k-labels-idx1-ubyte", _idx_bytes(labels), True)
    with pytest.raises(ValueError, match="6 images but 4 labels"):
        load_idx(tmp_path)


# ---------------------------------------------------------------------------- npz
def test_load_npz_scales_uint8_and_finds_labels(tmp_path, rng):
    images = rng.integers(0, 256, size=(9, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 10, size=9)
    np.savez(tmp_path / "d.npz", x=images, y=labels)
    x, y = load_npz(tmp_path / "d.npz")
    assert x.shape == (9, 64) and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), images.reshape(9, -1) / 255.0, atol=1e-7)
    assert y.dtype == torch.int64 and np.array_equal(y.numpy(), labels)

    floats = rng.random((4, 10)).astype(np.float64)
    np.savez(tmp_path / "f.npz", images=floats)
    x, y = load_npz(tmp_path / "f.npz", key="images")
    assert y is None and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), floats, rtol=1e-6)


def test_load_npz_errors(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "a.npz", pixels=rng.random((3, 4)))
    with pytest.raises(ValueError, match=r"no array named 'x'.*\['pixels'\]"):
        load_npz(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", x=rng.random((3, 4)) * 3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_npz(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", x=rng.integers(0, 5, size=(3, 4)))
    with pytest.raises(ValueError, match="dtype"):
        load_npz(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", x=rng.random(5))
    with pytest.raises(ValueError, match="shape"):
        load_npz(tmp_path / "d.npz")
    np.savez(tmp_path / "e.npz", x=rng.random((5, 2)), y=np.arange(4))
    with pytest.raises(ValueError, match="5 images .* 4 labels"):
        load_npz(tmp_path / "e.npz")


# ---------------------------------------------------------------------------- binarize
def test_binarize_static_and_dynamic():
    x = torch.rand(200, 50)
    s = binarize(x, "static")
    assert torch.equal(s, (x > 0.5).float())
    d1 = binarize(x, "dynamic", generator=torch.Generator().manual_seed(3))
    d2 = binarize(x, "dynamic", generator=torch.Generator().manual_seed(3))
    d3 = binarize(x, "dynamic", generator=torch.Generator().manual_seed(4))
    assert torch.equal(d1, d2) and not torch.equal(d1, d3)
    assert set(d1.unique().tolist()) <= {0.0, 1.0}
    # Each pixel is on with probability x: the mean error of the draw is small.
    assert (d1 - x).mean().abs() < 0.01
    with pytest.raises(ValueError, match="mode"):
        binarize(x, "threshold")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binarize(x + 1.5, "dynamic")
    with pytest.raises(ValueError, match="floating"):
        binarize((x * 255).to(torch.uint8), "static")


# ---------------------------------------------------------------------------- datasets
def test_load_dataset_mnist_from_t10k_only(tmp_path, rng):
    images, labels = _fake_mnist(tmp_path, "t10k", 10000, True, rng)
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert isinstance(ds, Dataset)
    assert ds.train.shape == (8000, 784) and ds.test.shape == (2000, 784)
    assert ds.image_shape == (1, 28, 28) and ds.input_dim == 784
    np.testing.assert_array_equal(ds.test_labels.numpy(), labels[8000:])
    np.testing.assert_allclose(ds.test[0].numpy(), images[8000].reshape(-1) / 255.0, atol=1e-7)


def test_load_dataset_mnist_uses_a_train_split_when_present(tmp_path, rng):
    _fake_mnist(tmp_path, "t10k", 30, False, rng)
    _fake_mnist(tmp_path, "train", 50, True, rng)
    ds = load_dataset("mnist", data_dir=tmp_path, binarize="static")
    assert ds.train.shape == (50, 784) and ds.test.shape == (30, 784)
    assert ds.train_labels.shape == (50,)
    assert set(ds.train.unique().tolist()) <= {0.0, 1.0}
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=tmp_path)


def test_load_dataset_npz_split_and_fraction(tmp_path, rng):
    np.savez(tmp_path / "one.npz", x=rng.integers(0, 256, size=(50, 12, 12), dtype=np.uint8),
             y=rng.integers(0, 10, size=50))
    ds = load_dataset(str(tmp_path / "one.npz"), test_fraction=0.1)
    assert ds.train.shape == (45, 144) and ds.test.shape == (5, 144)
    assert ds.image_shape == (1, 12, 12) and ds.test_labels.shape == (5,)
    ds = load_dataset("one.npz", data_dir=tmp_path)
    assert ds.train.shape == (40, 144)

    np.savez(tmp_path / "two.npz", x_train=rng.random((7, 3, 4, 4)), x_test=rng.random((2, 3, 4, 4)),
             y_train=np.arange(7), y_test=np.arange(2))
    ds = load_dataset(str(tmp_path / "two.npz"))
    assert ds.train.shape == (7, 48) and ds.test.shape == (2, 48) and ds.image_shape == (3, 4, 4)
    assert ds.train_labels.tolist() == list(range(7)) and ds.test_labels.tolist() == [0, 1]

    np.savez(tmp_path / "flat.npz", x=rng.random((10, 6)))
    assert load_dataset(str(tmp_path / "flat.npz")).image_shape == (6,)


def test_load_dataset_errors(tmp_path, rng):
    with pytest.raises(ValueError, match="name"):
        load_dataset("cifar")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_dataset(str(tmp_path / "nope.npz"))
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_dataset("mnist", data_dir=tmp_path)
    with pytest.raises(ValueError, match="binarize"):
        load_dataset("mnist", data_dir=tmp_path, binarize="yes")
    with pytest.raises(ValueError, match="test_fraction"):
        load_dataset("digits", test_fraction=1.0)
    np.savez(tmp_path / "tiny.npz", x=rng.random((1, 4)))
    with pytest.raises(ValueError, match="too few"):
        load_dataset(str(tmp_path / "tiny.npz"))


def test_load_digits():
    pytest.importorskip("sklearn", reason="scikit-learn (the 'digits' extra) is not installed")
    x, y = load_digits()
    assert x.shape == (1797, 64) and y.shape == (1797,)
    assert x.min() == 0.0 and x.max() == 1.0 and set(y.unique().tolist()) == set(range(10))
    xb, _ = load_digits(binarize="static")
    assert torch.equal(xb, (x > 0.5).float())
    ds = load_dataset("digits")
    assert ds.image_shape == (1, 8, 8) and ds.train.shape[0] + ds.test.shape[0] == 1797


def test_load_digits_without_scikit_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install fastvae\[digits\]"):
        load_digits()


def test_default_mnist_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTVAE_MNIST_DIR", str(tmp_path))
    assert data.default_mnist_dir() == tmp_path
    monkeypatch.delenv("FASTVAE_MNIST_DIR")
    assert data.default_mnist_dir().parts[-3:] == ("shared", "data", "mnist-t10k")


# ---------------------------------------------------------------------------- real data
@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"real MNIST t10k not present at {SHARED_MNIST}")
def test_real_mnist_t10k():
    x, y = load_idx(SHARED_MNIST, "t10k")
    assert x.shape == (10000, 784) and y.shape == (10000,)
    assert x.min() == 0.0 and x.max() == 1.0
    assert torch.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # Digits sit in the middle of the frame: the border rows are almost blank, the centre is not.
    img = x.view(-1, 28, 28).mean(0)
    assert img[:2].mean() < 0.01 < img[10:18, 10:18].mean()
    ds = load_dataset("mnist", data_dir=SHARED_MNIST)
    assert ds.train.shape == (8000, 784) and ds.test.shape == (2000, 784)
    assert torch.equal(ds.test, x[8000:])


def test_binarize_is_one_stream_however_a_batch_is_shared():
    """The trainer's dynamic binarisation is this function: a rank's share of a batch gets the
    bits the whole batch would, drawn as uniforms u from the generator with x = (u < grey)."""
    x = torch.rand(12, 7)
    whole = binarize(x, "dynamic", generator=torch.Generator().manual_seed(5))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(5))
    assert torch.equal(whole, (u < x).float())
    for ranks in (2, 3, 4):
        rows = 12 // ranks
        shares = [binarize(x[r * rows:(r + 1) * rows], "dynamic", generator=torch.Generator().manual_seed(5),
                           share=(r, ranks)) for r in range(ranks)]
        assert torch.equal(torch.cat(shares), whole), ranks
    # Without the range check (a training step, data checked once) the bits are the same.
    assert torch.equal(binarize(x, "dynamic", torch.Generator().manual_seed(5), check_range=False), whole)


# ---------------------------------------------------------------- photos (scikit-learn's two JPEGs)
def test_photos_are_8bit_rgb_patches_from_separate_regions():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_sample_images

    from fastvae.vae.photos import load_photos

    train, test = load_photos(patch=32, stride=16, test_fraction=0.2)
    assert train.dtype == torch.float32 and train.shape == (1550, 3 * 32 * 32) and test.shape == (350, 3 * 32 * 32)
    for x in (train, test):  # exactly the photographs' 8-bit levels over 255
        levels = x * 255
        assert torch.equal(levels, levels.round()) and levels.min() >= 0 and levels.max() <= 255
    images = load_sample_images().images
    # The first test patch of the first photograph is its top-left window at the split column
    # (640 - 128 = 512), channel-first; the last training patch ends at or before that column.
    first = torch.from_numpy(images[0][:32, 512:544].transpose(2, 0, 1).astype("float32") / 255).flatten()
    assert torch.equal(test[0], first)
    last_left = 512 - 32  # 480: the last stride-16 column whose 32-wide patch ends by 512
    top = (427 - 32) // 16 * 16
    last = torch.from_numpy(images[0][top:top + 32, last_left:last_left + 32].transpose(2, 0, 1).astype("float32"))
    assert torch.equal(train[775 - 1], last.flatten() / 255)
    assert not torch.equal(train[0], train[1])


def test_photos_data_set_and_its_argument_errors():
    pytest.importorskip("sklearn")
    from fastvae.vae.photos import load_photos, photo_patches

    ds = load_dataset("photos")
    assert ds.image_shape == (3, 32, 32) and ds.input_dim == 3072 and ds.train_labels is None
    assert len(ds.train) == 1550 and len(ds.test) == 350
    with pytest.raises(ValueError, match="patch must be an int >= 1"):
        load_photos(patch=0)
    with pytest.raises(ValueError, match="test_fraction"):
        load_photos(test_fraction=1.0)
    with pytest.raises(ValueError, match="narrower"):
        load_photos(patch=200, test_fraction=0.2)
    with pytest.raises(ValueError, match="no 8x8 patch fits"):
        photo_patches(np.zeros((4, 4, 3), np.uint8) + 1, 8, 1, 0, 4)
