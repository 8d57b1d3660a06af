"""Image dataset loaders (real MNIST and CIFAR-10 files, npz, image folders, errors)
and the PNG image grid."""


import keras
import numpy as np
import pytest
from PIL import Image

from keras_flows.datasets import IMAGE_DATASETS, download, load, load_arrays
from keras_flows.datasets.images import _flip_batch
from keras_flows.utils import save_image_grid
from real_data import dataset_file



def write_npz(path, n_train=100, n_test=30, shape=(28, 28), seed=0, **overrides):
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "y_train": np.arange(n_train, dtype=np.int64) % 10,
        "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "y_test": (np.arange(n_test, dtype=np.int64) % 10)[:, None],
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


def collect(ds):
    batches = list(ds.as_numpy_iterator())
    if isinstance(batches[0], dict):
        return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    return np.concatenate(batches)


# ------------------------------------------------------------- real files


def test_mnist_from_real_file():
    train, test = load("mnist", batch_size=1000, path=dataset_file("mnist"), seed=0)
    first = next(iter(train)).numpy()
    assert first.shape == (1000, 28, 28, 1) and first.dtype == np.uint8
    sizes = [b.shape[0] for b in test.as_numpy_iterator()]
    assert sum(sizes) == 10000 and len(sizes) == 10
    assert sum(b.shape[0] for b in train.as_numpy_iterator()) == 60000


def test_cifar10_from_real_file_is_shuffled():
    train, test = load("cifar10", batch_size=64, path=dataset_file("cifar10"), seed=1,
                       with_labels=True)
    batch = next(iter(train))
    x, y = batch["x"].numpy(), batch["context"].numpy()
    assert x.shape == (64, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (64,) and y.dtype == np.int32
    assert len(set(y.tolist())) > 3  # the file is sorted by class: a shuffle mixes them
    test_batch = next(iter(test))
    assert test_batch["x"].shape == (64, 32, 32, 3)
    assert sum(b["x"].shape[0] for b in test.as_numpy_iterator()) == 10000


# ---------------------------------------------------------------- npz


def test_npz_contents_order_and_labels(tmp_path):
    arrays = write_npz(tmp_path / "d.npz")
    train, test = load("mnist", batch_size=32, path=tmp_path / "d.npz", shuffle=False, with_labels=True)
    got = collect(test)
    np.testing.assert_array_equal(got["x"], arrays["x_test"][..., None])
    np.testing.assert_array_equal(got["context"], arrays["y_test"][:, 0])
    assert got["context"].dtype == np.int32
    np.testing.assert_array_equal(collect(train)["x"], arrays["x_train"][..., None])

    x_train, y_train, x_test, y_test = load_arrays("mnist", path=tmp_path / "d.npz")
    assert x_train.shape == (100, 28, 28, 1) and x_test.shape == (30, 28, 28, 1)
    assert y_train.dtype == y_test.dtype == np.int32 and y_test.shape == (30,)


def test_shuffle_is_seeded_and_a_permutation(tmp_path):
    arrays = write_npz(tmp_path / "d.npz")
    first = collect(load("mnist", batch_size=16, path=tmp_path / "d.npz", seed=3)[0])
    again = collect(load("mnist", batch_size=16, path=tmp_path / "d.npz", seed=3)[0])
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, arrays["x_train"][..., None])
    key = lambda x: sorted(map(bytes, x))  # noqa: E731
    assert key(first) == key(arrays["x_train"][..., None])


def test_drop_remainder_applies_to_train_only(tmp_path):
    write_npz(tmp_path / "d.npz")
    train, test = load("mnist", batch_size=32, path=tmp_path / "d.npz", drop_remainder=True)
    assert [b.shape[0] for b in train.as_numpy_iterator()] == [32, 32, 32]
    assert [b.shape[0] for b in test.as_numpy_iterator()] == [30]
    train, _ = load("mnist", batch_size=32, path=tmp_path / "d.npz")
    assert [b.shape[0] for b in train.as_numpy_iterator()] == [32, 32, 32, 4]


def test_flip_mirrors_some_training_images(tmp_path):
    arrays = write_npz(tmp_path / "d.npz", shape=(8, 8, 3))
    plain = collect(load("cifar10", batch_size=50, path=tmp_path / "d.npz", seed=5)[0])
    train, test = load("cifar10", batch_size=50, path=tmp_path / "d.npz", seed=5, flip=True)
    flipped = collect(train)
    mirrored = plain[:, :, ::-1]
    same = np.all(flipped == plain, axis=(1, 2, 3))
    mirror = np.all(flipped == mirrored, axis=(1, 2, 3))
    assert np.all(same | mirror)
    assert 20 < mirror.sum() < 80 and same.sum() > 20
    np.testing.assert_array_equal(collect(test), arrays["x_test"])  # never flipped


def test_flip_batch_directly():
    import tensorflow as tf

    images = tf.reshape(tf.range(4 * 2 * 3 * 1, dtype=tf.int32), (4, 2, 3, 1))
    out = _flip_batch(images, tf.constant([1, 2], tf.int64)).numpy()
    for got, image in zip(out, images.numpy()):
        assert np.array_equal(got, image) or np.array_equal(got, image[:, ::-1])
    draws = [_flip_batch(images, tf.constant([s, 0], tf.int64)).numpy() for s in range(10)]
    assert any(not np.array_equal(d, images.numpy()) for d in draws)
    assert any(np.array_equal(d[0], images.numpy()[0]) for d in draws)


def test_env_var_directory(tmp_path, monkeypatch):
    arrays = write_npz(tmp_path / "mnist.npz")
    write_npz(tmp_path / "downsampled_imagenet_32x32.npz", shape=(32, 32, 3), n_train=10, n_test=5)
    monkeypatch.setenv("KERAS_FLOWS_DATA", str(tmp_path))
    _, test = load("mnist", batch_size=64)
    np.testing.assert_array_equal(collect(test), arrays["x_test"][..., None])
    train, _ = load("downsampled_imagenet/32x32", batch_size=4)
    assert next(iter(train)).shape == (4, 32, 32, 3)
    assert load_arrays("mnist")[0].shape == (100, 28, 28, 1)
    write_npz(tmp_path / "other.npz", n_train=7)
    assert load_arrays("mnist", path=tmp_path / "other.npz")[0].shape[0] == 7  # path= wins


# ------------------------------------------------------------ image folders


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_with_class_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    images = {}
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            for i in range(n):
                image = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
                write_png(tmp_path / split / cls / f"{i}.png", image)
                images[(split, cls, i)] = image
    train, test = load("cifar10", batch_size=4, path=tmp_path, shuffle=False, with_labels=True)
    got = collect(test)
    assert got["x"].dtype == np.uint8 and got["x"].shape == (4, 6, 5, 3)
    np.testing.assert_array_equal(got["context"], [0, 0, 1, 1])
    np.testing.assert_array_equal(got["x"][2], images[("test", "dog", 0)])
    assert collect(train)["x"].shape == (6, 6, 5, 3)
    train, _ = load("cifar10", batch_size=6, path=tmp_path, seed=0, with_labels=True)
    shuffled = collect(train)
    assert sorted(shuffled["context"].tolist()) == [0, 0, 0, 1, 1, 1]
    assert sorted(map(bytes, shuffled["x"])) == sorted(bytes(images[("train", c, i)])
                                                     for c in ("cat", "dog") for i in range(3))
    x_train, y_train, x_test, y_test = load_arrays("cifar10", path=tmp_path)
    assert x_train.shape == (6, 6, 5, 3) and y_train.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(x_test, got["x"])


def test_image_folder_flat_grayscale_and_numeric_classes(tmp_path):
    for split in ("train", "test"):
        for i in range(3):
            write_png(tmp_path / "flat" / split / f"{i}.png", np.full((28, 28), 10 * i, np.uint8))
            write_png(tmp_path / "num" / split / str(7 + i) / "a.png", np.zeros((28, 28), np.uint8))
    _, test = load("mnist", path=tmp_path / "flat", shuffle=False, with_labels=True)
    got = collect(test)
    assert got["x"].shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(got["x"][:, 0, 0, 0], [0, 10, 20])
    np.testing.assert_array_equal(got["context"], [0, 0, 0])
    assert load_arrays("mnist", path=tmp_path / "num")[3].tolist() == [7, 8, 9]


def test_celeb_a_folder_is_cropped_and_resized(tmp_path):
    image = np.zeros((218, 178, 3), np.uint8)
    image[35:35 + 148, 15:15 + 148] = 200  # the central 148x148 crop
    for split in ("train", "test"):
        write_png(tmp_path / split / "0.png", image)
    train, _ = load("celeb_a", batch_size=2, path=tmp_path, flip=True, seed=0)
    x = next(iter(train)).numpy()
    assert x.shape == (1, 64, 64, 3) and x.dtype == np.uint8
    assert np.all(x == 200)


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("celeb_a", (64, 64, 3))])
def test_tfds_source_with_mock_data(name, shape, monkeypatch):
    import tensorflow_datasets as tfds
    monkeypatch.delenv("KERAS_FLOWS_DATA", raising=False)
    with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
        train, test = load(name, batch_size=4, seed=0, flip=True, with_labels=True)
        batch, test_batch = next(iter(train)), next(iter(test))
    assert batch["x"].shape == (4, *shape) and batch["x"].dtype == "uint8"
    assert batch["context"].shape == (4,) and batch["context"].dtype == "int32"
    assert test_batch["x"].shape == (4, *shape)


# ------------------------------------------------------------------ errors


def test_unknown_name():
    with pytest.raises(ValueError, match="cifar10") as info:
        load("cifar100")
    for name in IMAGE_DATASETS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="valid names"):
        load_arrays("svhn")


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load("mnist", path=missing)
    with pytest.raises(FileNotFoundError, match="train/ and test/"):
        load("mnist", path=tmp_path)


@pytest.mark.parametrize("overrides, message", [
    ({"y_test": None}, "y_test"),
    ({"x_train": np.zeros((4, 28, 28), np.float32)}, "uint8"),
    ({"x_train": np.zeros((4, 28), np.uint8)}, r"\(N, H, W\)"),
    ({"x_train": np.zeros((4, 8, 8, 2), np.uint8)}, "C in"),
    ({"y_train": np.zeros(3, np.int64)}, "labels"),
    ({"y_train": np.zeros(100, np.float32)}, "integers"),
])
def test_bad_npz(tmp_path, overrides, message):
    write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(ValueError, match=message):
        load("mnist", path=tmp_path / "bad.npz")


def test_not_an_npz(tmp_path):
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="npz"):
        load_arrays("mnist", path=tmp_path / "junk.npz")


def test_env_var_errors_and_tfds_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_FLOWS_DATA", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="absent"):
        load("mnist")
    monkeypatch.delenv("KERAS_FLOWS_DATA")
    monkeypatch.setenv("KERAS_FLOWS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KERAS_FLOWS_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="KERAS_FLOWS_DATA"):
        load_arrays("mnist")
    monkeypatch.delenv("KERAS_FLOWS_OFFLINE")

    import tensorflow_datasets as tfds

    def offline(*args, **kwargs):
        raise ConnectionError("no internet")

    monkeypatch.setattr(tfds, "load", offline)
    with pytest.raises(RuntimeError, match="path=") as info:
        load("fashion_mnist")
    assert "KERAS_FLOWS_DATA" in str(info.value) and "no internet" in str(info.value)
    monkeypatch.setenv("KERAS_FLOWS_DATA", str(tmp_path))  # a folder without the file
    with pytest.raises(RuntimeError, match="fashion_mnist.npz"):
        load("fashion_mnist")


def fake_keras_mnist(calls):
    rng = np.random.default_rng(0)
    x_train, x_test = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for n in (20, 6))
    y_train, y_test = (rng.integers(0, 10, n).astype(np.uint8) for n in (20, 6))

    def load_data():
        calls.append(1)
        return (x_train, y_train), (x_test, y_test)

    return load_data, (x_train, y_train, x_test, y_test)


def test_download_keeps_keras_datasets_arrays_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_FLOWS_DATA", raising=False)
    monkeypatch.delenv("KERAS_FLOWS_OFFLINE", raising=False)
    monkeypatch.setenv("KERAS_FLOWS_CACHE", str(tmp_path / "cache"))
    calls = []
    load_data, (x_train, y_train, x_test, y_test) = fake_keras_mnist(calls)
    monkeypatch.setattr(keras.datasets.mnist, "load_data", load_data)

    path = download("mnist")
    assert path == tmp_path / "cache" / "datasets" / "mnist.npz"
    assert download("mnist") == path and len(calls) == 1  # fetched once
    x, y, xt, yt = load_arrays("mnist")  # no path, no KERAS_FLOWS_DATA: the cached copy
    assert len(calls) == 1
    np.testing.assert_array_equal(x[..., 0], x_train)
    np.testing.assert_array_equal(y, y_train)
    np.testing.assert_array_equal(xt[..., 0], x_test)
    assert x.shape == (20, 28, 28, 1) and yt.shape == (6,)
    assert sorted(p.name for p in path.parent.iterdir()) == ["mnist.npz"]


def test_download_failure_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_FLOWS_DATA", raising=False)
    monkeypatch.delenv("KERAS_FLOWS_OFFLINE", raising=False)
    monkeypatch.setenv("KERAS_FLOWS_CACHE", str(tmp_path / "cache"))

    def unreachable():
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", unreachable)
    with pytest.raises(FileNotFoundError) as info:
        load_arrays("cifar10")
    message = str(info.value)
    assert "\n" not in message and "name resolution" in message
    assert "KERAS_FLOWS_DATA" in message and "cifar10.npz" in message
    assert not (tmp_path / "cache" / "datasets").exists() or \
        not list((tmp_path / "cache" / "datasets").iterdir())
    with pytest.raises(ValueError, match="tensorflow-datasets"):
        download("celeb_a")


# -------------------------------------------------------------- image grid


def test_save_image_grid_places_tiles(tmp_path):
    tiles = np.stack([np.full((3, 4, 3), 10 * (i + 1), np.uint8) for i in range(5)])
    tiles[:, 0, 0] = [1, 2, 3]  # mark each tile's top-left corner
    grid = save_image_grid(tiles, tmp_path / "sub" / "grid.png")
    # 5 tiles: 3 per row, 2 rows, 2-pixel padding around and between tiles.
    assert grid.shape == (2 * (3 + 2) + 2, 3 * (4 + 2) + 2, 3) and grid.dtype == np.uint8
    read = np.asarray(Image.open(tmp_path / "sub" / "grid.png"))
    np.testing.assert_array_equal(read, grid)
    for i in range(5):
        top, left = 2 + (i // 3) * 5, 2 + (i % 3) * 6
        np.testing.assert_array_equal(read[top, left], [1, 2, 3])
        np.testing.assert_array_equal(read[top + 1:top + 3, left:left + 4], 10 * (i + 1))
        assert np.all(read[top - 2:top, left:left + 4] == 0)  # padding above
    assert np.all(read[7:, 14:] == 0)  # the empty sixth cell
    assert save_image_grid(tiles, tmp_path / "row.png", nrow=5).shape == (7, 32, 3)


def test_save_image_grid_grayscale_float_backend_tensor(tmp_path):
    values = np.array([[-5.0, 1.6], [254.7, 300.0]], np.float32)
    images = keras.ops.convert_to_tensor(np.stack([values] * 4))
    grid = save_image_grid(images, tmp_path / "g.png", nrow=2)
    assert grid.shape == (2 * 4 + 2, 2 * 4 + 2, 1)
    read = np.asarray(Image.open(tmp_path / "g.png"))
    assert read.ndim == 2 and read.dtype == np.uint8
    np.testing.assert_array_equal(read[6:8, 6:8], [[0, 2], [255, 255]])


def test_save_image_grid_errors(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        save_image_grid(np.zeros((4, 4)), tmp_path / "a.png")
    with pytest.raises(ValueError, match="1 or 3 channels"):
        save_image_grid(np.zeros((2, 4, 4, 2)), tmp_path / "a.png")
