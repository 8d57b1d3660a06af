"""The `keras-flows` command: presets, sampling, scoring, training, export.

    keras-flows list
    keras-flows info cifar10
    keras-flows sample cifar10 --num 64 --temperature 0.7 --out samples.png
    keras-flows score cifar10 images/*.png
    keras-flows train zoo/glow_mnist_small.json --epochs 5 --out ./run
    keras-flows export cifar10 ./saved_model
    keras-flows export cifar10 ./onnx --format onnx
    keras-flows inpaint mnist --images 8 --mask center --steps 300 --out inpaint.png
    keras-flows evaluate cifar10 --fid --is --pr --bpd --num 10000 --json figures.json

A PRESET is a built-in name (`keras-flows list`), a preset directory or
archive, `hf://ORG/REPO` or an https:// URL. The backend is KERAS_BACKEND's.
Errors are one line starting `error:` with exit status 1 (2 for bad
arguments); `--verbose` shows the traceback instead.
"""

import argparse
import json
import math
import os
import sys

import numpy as np

from keras_flows import export


def _load(preset, load_weights=True):
    from keras_flows.models.flow import Flow

    return Flow.from_preset(preset, load_weights=load_weights)


def _is_image_flow(flow):
    """Whether the flow models images (height, width, channels)."""
    return len(flow.event_shape) == 3


def _dataset(preset):
    """The preset's metadata "dataset": an image dataset's name, or for toy data
    a dict (name, test_size, test_seed, ...)."""
    from keras_flows.presets import preset_files

    _, paths = preset_files(preset, None, load_weights=False)
    with open(paths["metadata.json"]) as f:
        return json.load(f).get("dataset")


def _dataset_name(dataset):
    return dataset.get("name") if isinstance(dataset, dict) else dataset


def _labels(flow, label, n):
    if getattr(flow, "num_classes", None) is None:
        if label is not None:
            raise SystemExit("error: this preset is not class-conditional; drop --label.")
        return None
    if label is None:
        return np.arange(n, dtype="int32") % flow.num_classes
    return np.full((n,), label, dtype="int32")


def cmd_list(args):
    from keras_flows.presets import ALIASES, MANIFEST

    families = sorted({entry["family"] for entry in MANIFEST.values()})
    if args.family is not None and args.family not in families:
        raise SystemExit(f"error: unknown family {args.family!r}; the presets' families are "
                         f"{', '.join(families)}.")
    short = {v: k for k, v in ALIASES.items()}
    rows = [("name", "class", "dataset", "parameters", "test figure")]
    for name, entry in MANIFEST.items():
        if args.family and entry["family"] != args.family:
            continue
        dataset = entry.get("dataset")
        dataset = dataset.get("name") if isinstance(dataset, dict) else dataset
        if "test_bits_per_dim" in entry:
            figure = f"{entry['test_bits_per_dim']:.3f} bits/dim"
        elif "test_nll_nats" in entry:
            figure = f"{entry['test_nll_nats']:.3f} nats"
            if "entropy_nats" in entry:
                figure += f" (entropy {entry['entropy_nats']:.3f})"
        else:
            figure = "-"
        shown = f"{name} ({short[name]})" if name in short else name
        rows.append((shown, entry["class_name"], str(dataset), f"{entry['parameters']:,}",
                     figure))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def cmd_info(args):
    from keras_flows.presets import MANIFEST, preset_files

    label, paths = preset_files(args.preset, None, load_weights=False)
    with open(paths["metadata.json"]) as f:
        metadata = json.load(f)
    if label in MANIFEST:
        print(f"preset {label}: files {os.path.dirname(paths['config.json'])}")
        metadata.setdefault("files", MANIFEST[label]["files"])
    print(json.dumps(metadata, indent=2))


def cmd_sample(args):
    import keras
    from keras import ops

    flow = _load(args.preset)
    labels = _labels(flow, args.label, args.num)
    seed = keras.random.SeedGenerator(args.seed)
    batches, bar = [], keras.utils.Progbar(args.num, unit_name="sample")
    for start in range(0, args.num, args.batch_size):
        n = min(args.batch_size, args.num - start)
        context = None if labels is None else labels[start:start + n]
        batches.append(ops.convert_to_numpy(
            flow.sample(n, context=context, temperature=args.temperature, seed=seed)))
        bar.add(n)
    samples = np.concatenate(batches)
    if args.out.endswith(".npy"):
        np.save(args.out, samples)
    elif args.out.endswith((".csv", ".txt")):
        np.savetxt(args.out, samples.reshape(len(samples), -1), delimiter=",")
    elif _is_image_flow(flow):
        from keras_flows.utils.images import save_image_grid

        save_image_grid(samples, args.out)
    else:
        raise SystemExit(f"error: {args.out}: write the samples of a vector flow as .npy "
                         "or .csv.")
    print(f"wrote {args.num} samples to {args.out}")


INPUTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".npy", ".npz",
          ".csv", ".txt")


def _expand(paths):
    """The files named, a directory standing for its files with an INPUTS suffix."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(path, name) for name in os.listdir(path)
                           if name.lower().endswith(INPUTS)
                           and os.path.isfile(os.path.join(path, name)))
            if not found:
                raise SystemExit(f"error: the directory {path} holds no inputs (files ending "
                                 f"{', '.join(INPUTS)}).")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise SystemExit(f"error: no such file or directory: {path}")
    return files


def _read_inputs(paths, flow):
    """(names, array) from image files, .npy/.npz arrays, or .csv rows."""
    names, arrays = [], []
    for path in _expand(paths):
        if path.endswith((".npy", ".npz")):
            data = np.load(path)
            if path.endswith(".npz"):
                data = data[data.files[0]]
            arrays.append(data)
            names += [f"{path}[{i}]" for i in range(len(data))]
        elif path.endswith((".csv", ".txt")):
            data = np.loadtxt(path, delimiter=",", ndmin=2)
            arrays.append(data)
            names += [f"{path}:{i + 1}" for i in range(len(data))]
        else:
            from PIL import Image, UnidentifiedImageError

            try:
                image = Image.open(path)
            except UnidentifiedImageError:
                raise SystemExit(f"error: {path} is not an image Pillow can read (nor a "
                                 ".npy, .npz or .csv file).")
            mode = "L" if flow.event_shape[-1] == 1 else "RGB"
            arrays.append(np.asarray(image.convert(mode))[None])
            names.append(path)
    data = np.concatenate([a.reshape(len(a), *a.shape[1:]) for a in arrays]).astype("float32")
    if _is_image_flow(flow) and data.ndim == 3:
        data = data[..., None]
    if tuple(data.shape[1:]) != tuple(flow.event_shape):
        raise SystemExit(f"error: the inputs have shape {tuple(data.shape[1:])} each; this "
                         f"preset models {tuple(flow.event_shape)}.")
    return names, data


def cmd_score(args):
    import keras
    from keras import ops

    flow = _load(args.preset)
    names, data = _read_inputs(args.files, flow)
    labels = _labels(flow, args.label, len(data)) if args.label is not None else None
    if getattr(flow, "num_classes", None) is not None and labels is None:
        raise SystemExit("error: this preset is class-conditional: give --label.")
    image = _is_image_flow(flow)
    scores, bar = [], keras.utils.Progbar(len(data), unit_name="input", verbose=args.progress)
    for start in range(0, len(data), args.batch_size):
        batch = data[start:start + args.batch_size]
        context = None if labels is None else labels[start:start + len(batch)]
        value = flow.bits_per_dim(batch, context) if image else flow.log_prob(batch)
        scores.append(ops.convert_to_numpy(value))
        bar.add(len(batch))
    scores = np.concatenate(scores)
    unit = "bits/dim" if image else "log p (nats)"
    for name, score in zip(names, scores):
        print(f"{score:.4f}  {name}")
    print(f"mean {unit}: {scores.mean():.4f} over {len(scores)}")


MASKS = ("center", "left", "random")


def inpainting_mask(kind, shape, seed=0):
    """A mask (1 = missing) of shape (N, H, W, 1) for N images of shape (H, W, C):
    "center" the central square of half the side, "left" the left half of the
    columns, "random" each pixel missing with probability 1/2 (from `seed`)."""
    n, h, w = shape[:3]
    mask = np.zeros((n, h, w, 1), dtype="float32")
    if kind == "center":
        mask[:, h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2] = 1
    elif kind == "left":
        mask[:, :, :w // 2] = 1
    elif kind == "random":
        mask[:] = np.random.default_rng(seed).random(mask.shape) < 0.5
    else:
        raise ValueError(f"`kind` must be one of {', '.join(MASKS)}; got {kind!r}.")
    return mask


def cmd_inpaint(args):
    from keras_flows.inpainting import inpaint, save_inpainting_grid

    flow = _load(args.preset)
    if not _is_image_flow(flow):
        raise SystemExit("error: inpaint completes images: give an image preset "
                         "(`keras-flows list`).")
    if getattr(flow, "num_classes", None) is not None:
        raise SystemExit("error: inpaint takes unconditional presets; this one is "
                         "class-conditional.")
    if args.files:
        _, images = _read_inputs(args.files, flow)
        images = images[:args.images]
    else:
        from keras_flows import datasets

        dataset = _dataset_name(_dataset(args.preset))
        if dataset not in datasets.IMAGE_DATASETS:
            raise SystemExit(f"error: this preset names no known dataset ({dataset!r}): "
                             "give image FILES to complete.")
        x_test = datasets.load_arrays(dataset, path=args.data)[2]
        chosen = np.random.default_rng(args.seed).choice(len(x_test), args.images,
                                                         replace=False)
        images = x_test[np.sort(chosen)].astype("float32")
    mask = inpainting_mask(args.mask, images.shape, args.seed)
    filled = inpaint(flow, images, mask, steps=args.steps, seed=args.seed, method=args.method)
    save_inpainting_grid(images, mask, filled, args.out)
    error = np.sqrt(np.mean((filled - images)[np.broadcast_to(mask, images.shape) > 0] ** 2))
    print(f"wrote {len(images)} originals, masked inputs and completions to {args.out} "
          f"(RMS error of the filled pixels: {error:.2f})")


SAMPLE_FIGURES = ("fid", "is", "pr")


def _feature_model(path, batch_size):
    """`evaluate --features`: None (InceptionV3) or a saved Keras model, wrapped
    as an `InceptionFeatures` taking `batch_size` images per call."""
    import keras

    from keras_flows.evaluation import InceptionFeatures

    if path in (None, "inception"):
        try:
            return InceptionFeatures(batch_size=batch_size)
        except RuntimeError as err:
            cause = err.__cause__ or err
            reason = " ".join(str(cause).split())
            reason = reason if len(reason) <= 160 else reason[:157] + "..."
            raise SystemExit(
                "error: the ImageNet weights of keras.applications.InceptionV3 could not be "
                f"downloaded ({type(cause).__name__}: {reason}); put "
                "inception_v3_weights_tf_dim_ordering_tf_kernels.h5 in ~/.keras/models/ or "
                "pass --features PATH.keras, a saved Keras model taking images scaled to "
                "[-1, 1] and giving features (or [features, logits] for --is).") from None
    if not os.path.isfile(path):
        raise SystemExit(f"error: --features {path}: no such file; pass 'inception' or a "
                         "saved Keras model (.keras).")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as err:
        message = " ".join(str(err).split())
        raise SystemExit(f"error: --features {path} is not a Keras model load_model can "
                         f"read ({type(err).__name__}: {message[:200]}).") from None
    if not isinstance(model, keras.Model) or len(model.inputs) != 1:
        raise SystemExit(f"error: --features {path}: the model must take one input, images "
                         "(B, H, W, C) scaled to [-1, 1].")
    return InceptionFeatures(model=model, batch_size=batch_size)


def _image_features(images, features, logits, unit):
    """(features, logits or None) of the images an iterator of batches gives,
    with a progress bar over `images`' count."""
    import keras

    count, batches = images
    bar = keras.utils.Progbar(count, unit_name=unit)
    parts = []
    for batch in batches:
        f, l = features.features_and_logits(batch)
        parts.append((f, l if logits else None))
        bar.add(len(f))
    feats = np.concatenate([f for f, _ in parts])
    return feats, np.concatenate([l for _, l in parts]) if logits else None


def _sample_batches(flow, args):
    """The samples of `keras-flows sample` with the same --seed and --batch-size."""
    import keras

    labels = _labels(flow, None, args.num)
    seed = keras.random.SeedGenerator(args.seed)
    for start in range(0, args.num, args.batch_size):
        n = min(args.batch_size, args.num - start)
        context = None if labels is None else labels[start:start + n]
        yield np.asarray(keras.ops.convert_to_numpy(
            flow.sample(n, context=context, temperature=args.temperature, seed=seed)))


def _real_images(dataset, args):
    """The first --num test images of the preset's dataset and their labels."""
    from keras_flows import datasets

    try:
        _, _, x_test, y_test = datasets.load_arrays(dataset, path=args.data)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {' '.join(str(err).split())}"
                         f"{'' if args.data else ' (or pass --data a .npz or an image folder)'}"
                         ) from None
    if args.num > len(x_test):
        raise SystemExit(f"error: --num {args.num} exceeds the {len(x_test)} test images of "
                         f"{dataset}.")
    return x_test[:args.num], y_test[:args.num]


def _vector_nll(flow, spec, args):
    """Mean -log p in nats of the first --num points of the preset's toy test set
    (`spec`: its metadata's dataset)."""
    import keras
    from keras import ops

    from keras_flows import datasets

    if not isinstance(spec, dict) or spec.get("name") not in datasets.TOY_DENSITIES:
        raise SystemExit(f"error: this preset's dataset ({spec!r}) is neither an image "
                         "dataset nor a toy density: evaluate has no test data for it.")
    if args.num > spec["test_size"]:
        raise SystemExit(f"error: --num {args.num} exceeds the {spec['test_size']} points of "
                         f"the preset's test set.")
    points = datasets.toy(spec["name"], spec["test_size"], seed=spec["test_seed"])[:args.num]
    values, bar = [], keras.utils.Progbar(args.num, unit_name="point")
    for start in range(0, args.num, args.batch_size):
        batch = points[start:start + args.batch_size]
        values.append(ops.convert_to_numpy(flow.log_prob(batch)))
        bar.add(len(batch))
    return -float(np.mean(np.concatenate(values)))


def cmd_evaluate(args):
    import keras
    from keras import ops

    from keras_flows.evaluation import FID, inception_score, precision_recall

    wanted = [name for name in ("fid", "is", "pr", "bpd") if getattr(args, name)]
    if not wanted:
        raise SystemExit("error: name the figures to compute: one or more of --fid, --is, "
                         "--pr, --bpd.")
    sampled = [name for name in wanted if name in SAMPLE_FIGURES]
    for option, value, needs in (("--features", args.features, sampled),
                                 ("--temperature", args.temperature, sampled),
                                 ("--k", args.k, "pr" in wanted)):
        if value is not None and not needs:
            raise SystemExit(f"error: {option} is used by "
                             f"{'--pr' if option == '--k' else '--fid, --is and --pr'} only.")
    k = 3 if args.k is None else args.k
    if "pr" in wanted and args.num <= k:
        raise SystemExit(f"error: --pr with --k {k} needs --num above {k}.")
    if "fid" in wanted and args.num < 2:
        raise SystemExit("error: --fid needs --num of at least 2.")
    args.temperature = 1.0 if args.temperature is None else args.temperature

    flow = _load(args.preset)
    spec = _dataset(args.preset)
    dataset = _dataset_name(spec)
    image = _is_image_flow(flow)
    if not image:
        if sampled:
            raise SystemExit(f"error: {', '.join('--' + n for n in sampled)} compare "
                             "images; this preset models vectors of shape "
                             f"{tuple(flow.event_shape)} (--bpd gives its test NLL).")
        if args.data is not None:
            raise SystemExit("error: --data is for image presets; a vector preset's test "
                             "points are drawn from its toy density.")
    results = {"preset": args.preset, "num": args.num, "seed": args.seed,
               "batch_size": args.batch_size}
    lines = []
    if sampled:
        features = _feature_model(args.features, args.batch_size)
        channels = flow.event_shape[-1]
        if channels not in (1, features.channels):
            raise SystemExit(f"error: the feature model takes {features.channels}-channel "
                             f"images; this preset's have {channels}.")
        model = features.model
        if "is" in wanted and isinstance(model, keras.Model) and len(model.outputs) < 2:
            raise SystemExit("error: --is needs a feature model giving [features, logits]; "
                             "this one gives features only.")
    if "fid" in wanted or "pr" in wanted or (image and "bpd" in wanted):
        real, labels = _real_images(dataset, args)
    if sampled:
        results.update(features=args.features or "inception", temperature=args.temperature)
        fake, logits = _image_features((args.num, _sample_batches(flow, args)), features,
                                       "is" in wanted, "sample")
    if "fid" in wanted or "pr" in wanted:
        batches = (real[i:i + args.batch_size] for i in range(0, args.num, args.batch_size))
        real_features, _ = _image_features((args.num, batches), features, False, "image")
    if "fid" in wanted:
        fid = FID(features=features)
        fid.update_features(real_features)
        fid.update_features(fake, fake=True)
        results["fid"] = fid.result()
        lines.append(f"FID: {results['fid']:.4f} ({fid.num_fake} samples against "
                     f"{fid.num_real} {dataset} test images)")
    if "is" in wanted:
        splits = min(10, args.num)
        mean, std = inception_score(logits=logits, splits=splits)
        results["inception_score"] = {"mean": mean, "std": std, "splits": splits}
        lines.append(f"Inception Score: {mean:.4f} +- {std:.4f} ({args.num} samples, "
                     f"{splits} splits)")
    if "pr" in wanted:
        precision, recall = precision_recall(real_features, fake, k=k)
        results.update(precision=precision, recall=recall, k=k)
        lines.append(f"precision: {precision:.4f}, recall: {recall:.4f} (k={k}; {args.num} "
                     f"samples against {args.num} {dataset} test images)")
    if "bpd" in wanted and image:
        context = labels if getattr(flow, "num_classes", None) is not None else None
        seed = keras.random.SeedGenerator(args.seed)
        values, bar = [], keras.utils.Progbar(args.num, unit_name="image")
        for start in range(0, args.num, args.batch_size):
            batch = real[start:start + args.batch_size]
            values.append(ops.convert_to_numpy(flow.bits_per_dim(
                batch, None if context is None else context[start:start + len(batch)],
                num_samples=1, seed=seed)))
            bar.add(len(batch))
        results["bits_per_dim"] = float(np.mean(np.concatenate(values)))
        lines.append(f"bits/dim: {results['bits_per_dim']:.4f} ({args.num} {dataset} test "
                     "images, one uniform dequantization each)")
    elif "bpd" in wanted:
        results["nll_nats"] = _vector_nll(flow, spec, args)
        lines.append(f"NLL: {results['nll_nats']:.4f} nats ({args.num} test points of "
                     f"{dataset})")
    for line in lines:
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")
    return results


def cmd_export(args):
    flow = _load(args.preset)
    flow.export(args.out, format=args.format)


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _temperature(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def parser():
    main = argparse.ArgumentParser(prog="keras-flows", description=__doc__.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="\n".join(__doc__.split("\n")[2:]))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="show the full traceback of an error")
    commands = main.add_subparsers(dest="command", required=True)

    def command(name, **kwargs):
        return commands.add_parser(name, parents=[common], **kwargs)

    p = command("list", help="the built-in presets and their measured figures")
    p.add_argument("--family", help="only this family (glow, realnvp)")

    p = command("info", help="a preset's metadata: data, training, figures")
    p.add_argument("preset")

    p = command("sample", help="draw samples and write a PNG grid or array")
    p.add_argument("preset")
    p.add_argument("--num", type=_positive_int, default=64,
                   help="number of samples (default 64)")
    p.add_argument("--temperature", type=_temperature, default=1.0,
                   help="latent scale, >= 0 (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", type=int, help="class of every sample (class-conditional "
                                             "presets; default: cycle through classes)")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--out", default="samples.png", help=".png grid (images), .npy or .csv")

    p = command("score", help="bits/dim of images (or log p of vectors)")
    p.add_argument("preset")
    p.add_argument("files", nargs="+", help="image files, .npy/.npz arrays or .csv rows, or "
                                            "directories of them")
    p.add_argument("--label", type=int, help="class of every input (class-conditional)")
    p.add_argument("--batch-size", type=_positive_int, default=100)
    p.add_argument("--progress", type=int, default=1, help="1 shows a progress bar")

    p = commands.add_parser("train", help="train from a zoo/ config (python -m "
                                          "keras_flows.train's options follow)",
                            add_help=False)
    p.add_argument("config")

    p = command("export", help="write a TF SavedModel with serving signatures "
                                           "(or ONNX models)")
    p.add_argument("preset")
    p.add_argument("out")
    p.add_argument("--format", choices=export.FORMATS, default=export.FORMATS[0],
                   help="tf_saved_model (default): log_prob, bits_per_dim, encode, decode, "
                        "sample; onnx: one OUT/<signature>.onnx for each but sample")

    p = command("inpaint", help="fill masked pixels of images; write original, masked and "
                                "completed rows as a PNG")
    p.add_argument("preset")
    p.add_argument("files", nargs="*", help="images to complete (files, arrays or "
                                            "directories); default: the preset's test set")
    p.add_argument("--images", type=_positive_int, default=8,
                   help="number of images (default 8)")
    p.add_argument("--mask", choices=MASKS, default="center",
                   help="missing region: center square, left half or random pixels")
    p.add_argument("--steps", type=_positive_int, default=300)
    p.add_argument("--method", choices=("map", "langevin"), default="map")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="the dataset's .npz or folder (default: KERAS_FLOWS_DATA)")
    p.add_argument("--out", default="inpaint.png")

    p = command("evaluate", help="FID, Inception Score, precision/recall of samples and "
                                 "bits/dim (or NLL) of test data",
                description="Draws --num samples (as `sample` does with the same --seed and "
                            "--batch-size) and compares them with the first --num test "
                            "images of the preset's dataset. Features come from "
                            "keras.applications.InceptionV3 (pool3 and logits; ImageNet "
                            "weights, downloaded once) or from --features PATH.keras: a saved "
                            "Keras model taking (B, H, W, C) images scaled to [-1, 1] (resized "
                            "to its input size; grey images repeated to its channels) and "
                            "giving the feature vector, or [features, logits] (needed by "
                            "--is).")
    p.add_argument("preset")
    p.add_argument("--fid", action="store_true", help="Frechet distance of the features")
    p.add_argument("--is", action="store_true", help="Inception Score of the samples (10 "
                                                     "splits, or --num if fewer)")
    p.add_argument("--pr", action="store_true", help="improved precision and recall "
                                                     "(k-NN manifolds of the features)")
    p.add_argument("--bpd", action="store_true", help="bits/dim of the test images (one "
                                                      "uniform dequantization each; vector "
                                                      "presets: test NLL in nats)")
    p.add_argument("--num", type=_positive_int, default=10_000,
                   help="samples and test images (or points) (default 10000)")
    p.add_argument("--batch-size", type=_positive_int, default=100)
    p.add_argument("--k", type=_positive_int, help="neighbour of --pr's radii (default 3)")
    p.add_argument("--temperature", type=_temperature, help="latent scale of the samples "
                                                            "(default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="the dataset's .npz or folder (default: KERAS_FLOWS_DATA)")
    p.add_argument("--features", help="'inception' (default) or a saved Keras feature model")
    p.add_argument("--json", help="also write the figures to this JSON file")
    return main


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:   # the training script parses and documents the rest
        from keras_flows import train

        return train.main(argv[1:], prog="keras-flows train")
    args = parser().parse_args(argv)
    try:
        {"list": cmd_list, "info": cmd_info, "sample": cmd_sample, "score": cmd_score,
         "export": cmd_export, "inpaint": cmd_inpaint,
         "evaluate": cmd_evaluate}[args.command](args)
    except KeyboardInterrupt:
        if args.verbose:
            raise
        raise SystemExit("error: interrupted.")
    except Exception as err:  # one line for any failure; the traceback with --verbose
        if args.verbose:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        raise SystemExit(f"error: {message} (--verbose shows the traceback)")


if __name__ == "__main__":
    main()
