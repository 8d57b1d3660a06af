"""Image datasets for flows, as `tf.data` pipelines of uint8 batches (B, H, W, C).

Data comes from, in order: the `path=` argument (a `keras.datasets`-style
`.npz` or an image folder), the directory named by the `KERAS_FLOWS_DATA`
environment variable, then a download: tensorflow-datasets for `load`, and
for `load_arrays` `keras.datasets`' copy of MNIST, Fashion-MNIST and
CIFAR-10, fetched once (with its progress bar) and kept as
`<cache>/datasets/<name>.npz` (see `download`). `tf.data` feeds `fit` on all
three Keras backends.
"""

import os
import pathlib

import numpy as np

__all__ = ["load", "load_arrays", "download", "npz_file", "IMAGE_DATASETS"]

# name -> (tfds name, tfds test split, channels, spatial size after preprocessing)
_SPECS = {
    "mnist": ("mnist", "test", 1, (28, 28)),
    "fashion_mnist": ("fashion_mnist", "test", 1, (28, 28)),
    "cifar10": ("cifar10", "test", 3, (32, 32)),
    "celeb_a": ("celeb_a", "test", 3, (64, 64)),
    "downsampled_imagenet/32x32": ("downsampled_imagenet/32x32", "validation", 3, (32, 32)),
    "downsampled_imagenet/64x64": ("downsampled_imagenet/64x64", "validation", 3, (64, 64)),
}
IMAGE_DATASETS = tuple(_SPECS)
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_CELEBA_CROP = 148
_TFDS_SHUFFLE_BUFFER = 10_000
ENV_VAR = "KERAS_FLOWS_DATA"
# Datasets `download` fetches through keras.datasets (the same arrays as the
# .npz files this package reads).
_KERAS_DATASETS = ("mnist", "fashion_mnist", "cifar10")


def _check_name(name):
    if name not in _SPECS:
        raise ValueError(f"Unknown image dataset {name!r}; valid names: {', '.join(IMAGE_DATASETS)}.")


def _file_stem(name):
    return name.replace("/", "_")


def _is_image_folder(path):
    return path.is_dir() and (path / "train").is_dir() and (path / "test").is_dir()


def _resolve_local(name, path):
    """The local source for `name` as `("npz" | "folder", Path)`, or None for tfds."""
    if path is not None:
        path = pathlib.Path(path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"No such file or folder for dataset {name!r}: {path}")
        if path.is_dir():
            if _is_image_folder(path):
                return "folder", path
            npz = path / f"{_file_stem(name)}.npz"
            if npz.is_file():
                return "npz", npz
            raise FileNotFoundError(
                f"{path} is a folder without train/ and test/ subfolders and without "
                f"{npz.name}; pass a .npz file or an image folder with train/ and test/."
            )
        return "npz", path
    root = os.environ.get(ENV_VAR)
    if root:
        root = pathlib.Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"{ENV_VAR} names no folder: {root}")
        npz = root / f"{_file_stem(name)}.npz"
        if npz.is_file():
            return "npz", npz
        if _is_image_folder(root / _file_stem(name)):
            return "folder", root / _file_stem(name)
    return None


# ---------------------------------------------------------------- npz files


def _read_npz(name, path):
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"Could not read {path} as a .npz file: {err}") from err
    with data:
        missing = [k for k in _NPZ_KEYS if k not in data.files]
        if missing:
            raise ValueError(
                f"{path} lacks {missing}; a dataset .npz needs the arrays {list(_NPZ_KEYS)} "
                f"(as saved from keras.datasets.<name>.load_data()); it has {data.files}."
            )
        arrays = {k: data[k] for k in _NPZ_KEYS}
    out = []
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        out += list(_validate_arrays(x, y, f"{path}: x_{split}/y_{split}"))
    return out


def _validate_arrays(x, y, where):
    if x.dtype != np.uint8:
        raise ValueError(f"{where}: images must be uint8 in [0, 255]; got dtype {x.dtype}.")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(
            f"{where}: images must have shape (N, H, W) or (N, H, W, C) with C in (1, 3); "
            f"got {x.shape}."
        )
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{where}: labels must have shape ({x.shape[0]},) or ({x.shape[0]}, 1); got {y.shape}.")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise ValueError(f"{where}: labels must be integers; got dtype {y.dtype}.")
    return x, y.astype(np.int32)


# ------------------------------------------------------------ image folders


def _folder_files(split_dir):
    """Sorted image files under `split_dir` with their class folder ('' if none)."""
    files = sorted(
        p for p in split_dir.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
    )
    if not files:
        raise ValueError(f"No PNG or JPEG files under {split_dir}.")
    classes = [p.relative_to(split_dir).parts[0] if p.parent != split_dir else "" for p in files]
    return [str(p) for p in files], classes


def _class_index(names):
    """Class folder name -> int label: the number itself for numeric names, else
    the rank among the sorted names; files not in a class folder get 0."""
    named = sorted({n for n in names if n})
    if all(n.isdigit() for n in named):
        return {n: int(n) for n in named}
    return {n: i for i, n in enumerate(named)}


def _folder_datasets(name, root, shuffle=False, seed=None):
    """Unbatched (image, label) datasets; the training file list (not the decoded
    images) is shuffled with a full-size buffer when `shuffle`."""
    import tensorflow as tf

    channels = _SPECS[name][2]
    train, test = _folder_files(root / "train"), _folder_files(root / "test")
    index = _class_index(train[1] + test[1])

    # decode_image has no static size, which a traced training step needs:
    # batches hold one size, so the first file's (after preprocessing) is every file's.
    if name == "celeb_a":
        size = _SPECS[name][3]
    else:
        from PIL import Image

        with Image.open(train[0][0]) as first:
            size = first.size[::-1]

    def decode(file, label):
        image = tf.io.decode_image(tf.io.read_file(file), channels=channels, expand_animations=False)
        return tf.ensure_shape(_preprocess(name, image), (*size, channels)), label

    def make(files, classes, shuffle):
        labels = np.array([index.get(c, 0) for c in classes], np.int32)
        ds = tf.data.Dataset.from_tensor_slices((files, labels))
        if shuffle:
            ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)

    return make(*train, shuffle), make(*test, False)


# ------------------------------------------------------------ preprocessing


def _preprocess(name, image):
    """CelebA: central 148x148 crop, then resize to 64x64 (RealNVP, Glow). Images
    already 64x64 pass unchanged; other datasets are left as they are."""
    import tensorflow as tf

    if name != "celeb_a":
        return image
    target = _SPECS[name][3]
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)

    def crop_resize():
        size = tf.minimum(_CELEBA_CROP, tf.minimum(shape[-3], shape[-2]))
        top, left = (shape[-3] - size) // 2, (shape[-2] - size) // 2
        crop = image[..., top:top + size, left:left + size, :]
        resized = tf.image.resize(crop, target, method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

    same = tf.logical_and(tf.equal(shape[-3], target[0]), tf.equal(shape[-2], target[1]))
    out = tf.cond(same, lambda: tf.cast(image, tf.uint8), crop_resize)
    return tf.ensure_shape(out, image.shape[:-3] + target + image.shape[-1:])


def _preprocess_arrays(name, x, chunk=1024):
    if name != "celeb_a" or x.shape[1:3] == _SPECS[name][3]:
        return x
    return np.concatenate([_preprocess(name, x[i:i + chunk]).numpy() for i in range(0, len(x), chunk)])


def _flip_batch(images, seed):
    """Mirrors each image of a (B, H, W, C) batch left-right with probability 1/2;
    `seed` is a shape-(2,) int tensor for the stateless draw."""
    import tensorflow as tf

    flip = tf.random.stateless_uniform(tf.shape(images)[:1], seed) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)


# --------------------------------------------------------------- tfds


def _tfds_datasets(name, shuffle, seed, local_hint):
    tfds_name, test_split, _, _ = _SPECS[name]
    advice = (
        f"pass path= (a .npz with {', '.join(_NPZ_KEYS)} or an image folder with train/ and "
        f"test/), or set {ENV_VAR} to a folder holding {_file_stem(name)}.npz"
    )
    try:
        import tensorflow_datasets as tfds

        read_config = tfds.ReadConfig(shuffle_seed=seed)
        (train, test), info = tfds.load(
            tfds_name, split=["train", test_split], shuffle_files=shuffle,
            read_config=read_config, with_info=True,
        )
    except Exception as err:  # noqa: BLE001  (offline, missing package, corrupt cache, ...)
        raise RuntimeError(
            f"Could not load {name!r} with tensorflow-datasets ({type(err).__name__}: {err}). "
            f"Without internet, {advice}.{local_hint}"
        ) from err
    import tensorflow as tf

    _, _, channels, size = _SPECS[name]

    def unpack(example):
        label = example["label"] if "label" in example else tf.constant(0)
        image = tf.ensure_shape(_preprocess(name, example["image"]), size + (channels,))
        return image, tf.cast(label, tf.int32)

    train = train.map(unpack, num_parallel_calls=tf.data.AUTOTUNE)
    if shuffle:  # preprocessed images: a bounded buffer, on top of the shuffled files
        try:
            buffer = min(info.splits["train"].num_examples, _TFDS_SHUFFLE_BUFFER)
        except (KeyError, AttributeError):  # split sizes unknown (e.g. mocked data)
            buffer = _TFDS_SHUFFLE_BUFFER
        train = train.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    test = test.map(unpack, num_parallel_calls=tf.data.AUTOTUNE)
    return train, test


# --------------------------------------------------------------- public


def download(name):
    """The path of `<cache>/datasets/<name>.npz`, downloaded once.

    The arrays come from `keras.datasets` (its progress bar; its own copy in
    `~/.keras/datasets`) and are written with `x_train`, `y_train`, `x_test`,
    `y_test` through a temporary file renamed into place, so an interrupted
    download leaves nothing behind. `<cache>` is `$KERAS_FLOWS_CACHE`, else
    `$KERAS_HOME/keras_flows`. With `KERAS_FLOWS_OFFLINE=1` (or when the
    download fails) a missing file is a `FileNotFoundError` saying what to set.
    Only MNIST, Fashion-MNIST and CIFAR-10.
    """
    import keras

    from keras_flows.presets.download import cache_root, offline_mode

    _check_name(name)
    if name not in _KERAS_DATASETS:
        raise ValueError(f"download() fetches {', '.join(_KERAS_DATASETS)}; for {name!r} use "
                         f"load() (tensorflow-datasets) or set {ENV_VAR}.")
    target = pathlib.Path(cache_root()) / "datasets" / f"{name}.npz"
    if target.is_file():
        return target
    remedy = (f"set {ENV_VAR} to a folder holding {name}.npz (keys x_train, y_train, "
              f"x_test, y_test) or pass path=")
    if offline_mode():
        raise FileNotFoundError(f"{name!r} is not in the cache ({target}) and "
                                f"KERAS_FLOWS_OFFLINE forbids downloading it: {remedy}.")
    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    except Exception as error:  # any failure of keras' download: urllib, HTTP, a bad file
        raise FileNotFoundError(f"Could not download {name!r} through keras.datasets "
                                f"({type(error).__name__}: {error}); {remedy}.") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f"{target.stem}.part-{os.getpid()}.npz")
    try:
        np.savez(part, x_train=x_train, y_train=y_train.reshape(-1),
                 x_test=x_test, y_test=y_test.reshape(-1))
        os.replace(part, target)
    finally:
        if part.exists():
            part.unlink()
    return target


def npz_file(name, search=()):
    """The path of a local `<name>.npz`: `$KERAS_FLOWS_DATA`'s, else the first
    of the folders `search` that holds one, else `download(name)`'s."""
    folders = [os.environ[ENV_VAR]] if os.environ.get(ENV_VAR) else []
    for folder in [*folders, *search]:
        path = pathlib.Path(folder).expanduser() / f"{_file_stem(name)}.npz"
        if path.is_file():
            return path
    return download(name)


def load_arrays(name, path=None):
    """Loads a dataset as numpy arrays.

    Same local sources as `load` (`path=`, then `KERAS_FLOWS_DATA`), then,
    when neither is given, `download(name)` for MNIST, Fashion-MNIST and
    CIFAR-10; never tensorflow-datasets.

    Returns:
        `(x_train, y_train, x_test, y_test)`: uint8 images of shape (N, H, W, C)
        (MNIST gains its channel axis) and int32 labels of shape (N,).
    """
    _check_name(name)
    source = _resolve_local(name, path)
    if source is None and name in _KERAS_DATASETS and not os.environ.get(ENV_VAR):
        source = "npz", download(name)
    if source is None:
        where = f" ({ENV_VAR}={os.environ[ENV_VAR]} holds no {_file_stem(name)}.npz)" if os.environ.get(ENV_VAR) else ""
        raise FileNotFoundError(
            f"No local files for {name!r}{where}: pass path= or set {ENV_VAR} to a folder "
            f"holding {_file_stem(name)}.npz."
        )
    kind, location = source
    if kind == "npz":
        x_train, y_train, x_test, y_test = _read_npz(name, location)
        return _preprocess_arrays(name, x_train), y_train, _preprocess_arrays(name, x_test), y_test
    train, test = _folder_datasets(name, location)
    out = []
    for ds in (train, test):
        x, y = zip(*ds.batch(1024).as_numpy_iterator())
        out += [np.concatenate(x), np.concatenate(y)]
    return tuple(out)


def load(name, batch_size=64, path=None, shuffle=True, flip=False, seed=None,
         with_labels=False, drop_remainder=False):
    """Loads an image dataset as batched `tf.data` pipelines.

    Args:
        name: one of `IMAGE_DATASETS`: "mnist", "fashion_mnist", "cifar10",
            "celeb_a" (central 148x148 crop resized to 64x64, as in RealNVP and
            Glow), "downsampled_imagenet/32x32", "downsampled_imagenet/64x64".
        batch_size: images per batch.
        path: a `.npz` with `x_train`, `y_train`, `x_test`, `y_test` (uint8
            images (N, H, W) or (N, H, W, C); labels (N,) or (N, 1)), or a
            folder with `train/` and `test/` subfolders of PNG/JPEG files
            (labels from class subfolders, numeric names taken as the label,
            others numbered in sorted order; 0 without subfolders), or a folder
            holding `<name>.npz`. Without it, `$KERAS_FLOWS_DATA/<name>.npz`
            (or `$KERAS_FLOWS_DATA/<name>/`, "/" in names replaced by "_"),
            then tensorflow-datasets.
        shuffle: reshuffle the training set each epoch (a full-size buffer
            for `.npz` arrays and image folders, whose file list is shuffled
            before decoding; for tensorflow-datasets, shuffled files then a
            buffer of 10,000 images).
        flip: mirror each training image left-right with probability 1/2.
        seed: seed of the shuffle and the flips, for reproducible pipelines.
        with_labels: yield `{"x": images, "context": labels}` (int32, (B,))
            instead of images alone: the inputs of a class-conditional `Flow`.
        drop_remainder: drop the last partial training batch. The test split
            always keeps it, so that evaluation covers every test image.

    Returns:
        `(train, test)`: `tf.data.Dataset`s of uint8 batches (B, H, W, C). The
        test split is neither shuffled nor flipped.
    """
    import tensorflow as tf

    _check_name(name)
    source = _resolve_local(name, path)
    if source is not None and source[0] == "npz":
        x_train, y_train, x_test, y_test = load_arrays(name, source[1])
        train = _array_batches(x_train, y_train, batch_size, shuffle, seed, drop_remainder)
        test = _array_batches(x_test, y_test, batch_size, False, None, False)
    else:
        if source is not None:
            train, test = _folder_datasets(name, source[1], shuffle, seed)
        else:
            hint = ""
            if os.environ.get(ENV_VAR):
                hint = f" ({ENV_VAR}={os.environ[ENV_VAR]} holds no {_file_stem(name)}.npz.)"
            train, test = _tfds_datasets(name, shuffle, seed, hint)
        train = train.batch(batch_size, drop_remainder=drop_remainder)
        test = test.batch(batch_size)

    if flip:
        randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        train = tf.data.Dataset.zip(train, randoms).map(
            lambda batch, key: (_flip_batch(batch[0], key), batch[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    def output(images, labels):
        return {"x": images, "context": labels} if with_labels else images

    train = train.map(output).prefetch(tf.data.AUTOTUNE)
    test = test.map(output).prefetch(tf.data.AUTOTUNE)
    return train, test


def _array_batches(x, y, batch_size, shuffle, seed, drop_remainder):
    """Batches of (images, labels) from in-memory arrays: the indices are shuffled
    (a buffer of the full size costs 8 bytes per image) and the batch gathered."""
    import tensorflow as tf

    x, y = tf.constant(x), tf.constant(y)
    indices = tf.data.Dataset.range(len(x))
    if shuffle:
        indices = indices.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    indices = indices.batch(batch_size, drop_remainder=drop_remainder)
    return indices.map(lambda i: (tf.gather(x, i), tf.gather(y, i)), num_parallel_calls=tf.data.AUTOTUNE)
