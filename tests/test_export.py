"""SavedModel export from the current backend, checked by loading the
SavedModels in a fresh process that imports only TensorFlow and NumPy."""

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import keras
import pytest
from keras import ops

import keras_flows as kf
from keras_flows.export import export_saved_model

# Runs the calls of argv[2] (JSON) on SavedModels; an argument names an input
# of argv[1] or an output "call.key" of an earlier call; writes argv[3].
LOADER = r"""
import json, sys
import numpy as np
import tensorflow as tf

inputs, outputs, models = dict(np.load(sys.argv[1])), {}, {}
for call in json.loads(sys.argv[2]):
    model = models.setdefault(call["path"], tf.saved_model.load(call["path"]))
    args = {k: tf.constant(inputs[v] if v in inputs else outputs[v])
            for k, v in call["args"].items()}
    fn = (getattr(model, call["fn"]) if call.get("restored")
          else model.signatures[call["fn"]])
    try:
        result = fn(**args)
    except tf.errors.InvalidArgumentError as error:
        if not call.get("fails"):
            raise
        outputs[call["name"] + ".error"] = np.array(error.message)
        continue
    assert not call.get("fails"), call
    outputs.update({call["name"] + "." + k: v.numpy() for k, v in result.items()})
assert "keras_flows" not in sys.modules  # (importing tensorflow imports parts of keras)
np.savez(sys.argv[3], **outputs)
"""


def numpy(x):
    return ops.convert_to_numpy(x)


def perturb(flow, seed):
    """Adds seeded noise to the trainable weights (the zero-initialised
    couplings and priors make a fresh flow nearly trivial). The fixed LU
    permutation and ActNorm's stored start are left alone."""
    rng = np.random.default_rng(seed)
    for v in flow.trainable_weights:
        v.assign(numpy(v) + rng.normal(0.0, 0.1, v.shape).astype("float32"))
    return flow


def glow(**kwargs):
    return kf.Glow(image_shape=(8, 8, 1), levels=2, steps_per_level=1, hidden_channels=8,
                   seed=0, **kwargs)


def sampling_calls(name, path, **given):
    """sample at seeds 7, 7, 8 and at temperature 0."""
    calls = []
    for tag, seed, temperature in (("s7", "seed7", "t1"), ("s7b", "seed7", "t1"),
                                   ("s8", "seed8", "t1"), ("t0", "seed7", "t0")):
        calls.append(dict(name=f"{name}.{tag}", path=path, fn="sample",
                          args=dict(n=f"{name}.n", temperature=temperature, seed=seed,
                                    **given)))
    return calls


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Three flows exported from this backend and their SavedModels' outputs."""
    tmp = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    vector = perturb(kf.RealNVP(event_shape=(2,), num_layers=2, hidden_units=[8],
                                context_shape=(3,)), 1)
    image, labelled = perturb(glow(), 2), perturb(glow(num_classes=3), 3)
    images = rng.integers(0, 256, size=(5, 8, 8, 1)).astype("float32")
    inputs = dict(
        x=rng.normal(size=(6, 2)).astype("float32"),
        context=rng.normal(size=(6, 3)).astype("float32"),
        z=rng.normal(size=(6, 2)).astype("float32"),
        images=images, labels=np.array([0, 1, 2, 1, 0], "int32"),
        seed7=np.int64(7), seed8=np.int64(8), t1=np.float32(1.0), t0=np.float32(0.0),
        **{"vector.n": np.int32(6), "image.n": np.int32(5), "labelled.n": np.int32(5),
           "bad_n": np.int32(4)})
    for name, flow in (("image", image), ("labelled", labelled)):
        given = [inputs["labels"]] if flow.num_classes else []
        inputs[f"{name}.keras_z"] = numpy(flow.encode(images, *given))

    paths = {name: str(tmp / name) for name in ("vector", "image", "labelled")}
    export_saved_model(vector, paths["vector"], verbose=False)
    with contextlib.redirect_stdout(io.StringIO()) as summary:
        export_saved_model(image, paths["image"])
    labelled.export(paths["labelled"], verbose=False)

    v, i, c = paths["vector"], paths["image"], paths["labelled"]
    xc = dict(x="x", context="context")
    calls = [
        dict(name="vector.log_prob", path=v, fn="log_prob", args=xc),
        dict(name="vector.restored", path=v, fn="log_prob", args=xc, restored=True),
        dict(name="vector.encode", path=v, fn="encode", args=xc),
        dict(name="vector.decode", path=v, fn="decode", args=dict(z="z", context="context")),
        dict(name="vector.round_trip", path=v, fn="decode",
             args=dict(z="vector.encode.z", context="context")),
        *sampling_calls("vector", v, context="context"),
    ]
    for name, path, given in (("image", i, {}), ("labelled", c, {"context": "labels"})):
        calls += [
            dict(name=f"{name}.log_prob", path=path, fn="log_prob",
                 args=dict(x="images", **given)),
            dict(name=f"{name}.bits_per_dim", path=path, fn="bits_per_dim",
                 args=dict(x="images", **given)),
            dict(name=f"{name}.encode", path=path, fn="encode", args=dict(x="images", **given)),
            dict(name=f"{name}.decode", path=path, fn="decode",
                 args=dict(z=f"{name}.keras_z", **given)),
            dict(name=f"{name}.round_trip", path=path, fn="decode",
                 args=dict(z=f"{name}.encode.z", **given)),
            *sampling_calls(name, path, **given),
        ]
    calls.append(dict(name="labelled.bad_n", path=c, fn="sample", fails=True,
                      args=dict(n="bad_n", temperature="t1", seed="seed7", context="labels")))

    np.savez(tmp / "inputs.npz", **inputs)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    run = subprocess.run([sys.executable, "-c", LOADER, str(tmp / "inputs.npz"),
                          json.dumps(calls), str(tmp / "outputs.npz")],
                         env=dict(env, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    outputs = dict(np.load(tmp / "outputs.npz"))
    return dict(vector=vector, image=image, labelled=labelled, inputs=inputs,
                outputs=outputs, summary=summary.getvalue())


def close(actual, expected):
    np.testing.assert_allclose(actual, numpy(expected), rtol=1e-4, atol=1e-3)


def test_vector_flow_signatures_match_the_model(exported):
    flow, inputs, out = exported["vector"], exported["inputs"], exported["outputs"]
    x, context = inputs["x"], inputs["context"]
    z = numpy(flow.encode(x, context))
    assert not np.allclose(z, x, atol=0.05)   # the perturbed flow is no identity
    close(out["vector.log_prob.log_prob"], flow.log_prob(x, context))
    close(out["vector.restored.log_prob"], flow.log_prob(x, context))
    close(out["vector.encode.z"], z)
    close(out["vector.decode.x"], flow.decode(inputs["z"], context))
    close(out["vector.round_trip.x"], x)


@pytest.mark.parametrize("name", ["image", "labelled"])
def test_image_flow_signatures_match_the_model(exported, name):
    flow, inputs, out = exported[name], exported["inputs"], exported["outputs"]
    images = inputs["images"]
    given = [inputs["labels"]] if flow.num_classes else []
    close(out[f"{name}.log_prob.log_prob"], flow.log_prob(images, *given))
    close(out[f"{name}.bits_per_dim.bits_per_dim"], flow.bits_per_dim(images, *given))
    assert sorted(k for k in out if k.startswith(f"{name}.encode.")) == [f"{name}.encode.z"]
    close(out[f"{name}.encode.z"], flow.encode(images, *given))
    np.testing.assert_array_equal(out[f"{name}.decode.x"], images)
    np.testing.assert_array_equal(out[f"{name}.round_trip.x"], images)


def test_class_labels_change_the_exported_density(exported):
    flow, inputs, out = exported["labelled"], exported["inputs"], exported["outputs"]
    other = (inputs["labels"] + 1) % 3
    assert not np.allclose(numpy(flow.log_prob(inputs["images"], other)),
                           out["labelled.log_prob.log_prob"], rtol=1e-3)
    assert "`n` must equal the number of rows of `context`" in str(out["labelled.bad_n.error"])


@pytest.mark.parametrize("name", ["vector", "image", "labelled"])
def test_exported_sampler_is_seeded_and_is_the_models_sampler(exported, name):
    flow, inputs, out = exported[name], exported["inputs"], exported["outputs"]
    n = int(inputs[f"{name}.n"])
    given = ([inputs["context"]] if name == "vector" else
             [inputs["labels"]] if name == "labelled" else [])
    s7, s8 = out[f"{name}.s7.x"], out[f"{name}.s8.x"]
    assert s7.shape == (n, *flow.event_shape) and np.isfinite(s7).all()
    np.testing.assert_array_equal(s7, out[f"{name}.s7b.x"])
    assert not np.allclose(s7, s8)
    assert len(np.unique(s7.reshape(n, -1), axis=0)) == n
    # At temperature 0 every latent is its prior's mean: no randomness left,
    # so the exported sampler must reproduce the model's own on any backend.
    keras_t0 = numpy(flow.sample(n, *given, temperature=0.0, seed=0))
    t0 = out[f"{name}.t0.x"]
    if name == "vector":
        close(t0, keras_t0)
    else:
        for s in (s7, s8, t0):
            assert s.min() >= 0 and s.max() <= 255 and (s == np.floor(s)).all()
        assert np.abs(t0 - keras_t0).max() <= 1 and (t0 != keras_t0).mean() < 0.01
    if keras.backend.backend() == "tensorflow" and name == "image":
        # flow.sample traces with a tensor n here, and the seeds are Keras's.
        np.testing.assert_array_equal(s7, numpy(flow.sample(n, seed=7)))


def test_a_model_the_export_process_cannot_rebuild_fails_with_its_error(tmp_path):
    @keras.saving.register_keras_serializable(package="test_export")
    class LocalRealNVP(kf.RealNVP):
        pass

    flow = LocalRealNVP(event_shape=(2,), num_layers=1, hidden_units=[4])
    path = tmp_path / "local"
    if keras.backend.backend() == "tensorflow":   # exported in this process
        export_saved_model(flow, path, verbose=False)
        assert (path / "saved_model.pb").is_file()
    else:
        with pytest.raises(RuntimeError, match=r"(?s)subprocess.*LocalRealNVP"):
            export_saved_model(flow, path, verbose=False)
        assert not path.exists()


def test_verbose_export_prints_the_signatures(exported):
    lines = exported["summary"].splitlines()
    assert lines[0].startswith("Saved Glow to ") and len(lines) == 6, lines
    assert "  decode(z: float32[None, 64]) -> {x: float32[None, 8, 8, 1]}" in lines


@pytest.fixture(scope="module")
def onnx_exported(exported, tmp_path_factory):
    """The vector and class-conditional flows of `exported` as ONNX models."""
    tmp = tmp_path_factory.mktemp("onnx")
    exported["vector"].export(tmp / "vector", format="onnx", verbose=False)
    with contextlib.redirect_stdout(io.StringIO()) as summary:
        exported["labelled"].export(tmp / "labelled", format="onnx")
    return tmp, summary.getvalue()


def run_onnx(path, **feeds):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def test_onnx_models_of_a_vector_flow_match_the_model(exported, onnx_exported):
    flow, inputs = exported["vector"], exported["inputs"]
    directory = onnx_exported[0] / "vector"
    assert sorted(p.name for p in directory.iterdir()) == [
        "bits_per_dim.onnx", "decode.onnx", "encode.onnx", "log_prob.onnx"]
    x, context = inputs["x"], inputs["context"]
    close(run_onnx(directory / "log_prob.onnx", x=x, context=context)["log_prob"],
          flow.log_prob(x, context))
    z = run_onnx(directory / "encode.onnx", x=x, context=context)["z"]
    close(z, flow.encode(x, context))
    close(run_onnx(directory / "decode.onnx", z=z, context=context)["x"], x)


def test_onnx_models_of_a_class_conditional_glow_match_the_model(exported, onnx_exported):
    flow, inputs = exported["labelled"], exported["inputs"]
    directory, summary = onnx_exported[0] / "labelled", onnx_exported[1]
    assert summary.splitlines() == [f"wrote {directory / name}.onnx" for name in
                                    ("log_prob", "bits_per_dim", "encode", "decode")]
    images, labels = inputs["images"], inputs["labels"]
    close(run_onnx(directory / "log_prob.onnx", x=images, context=labels)["log_prob"],
          flow.log_prob(images, labels))
    close(run_onnx(directory / "bits_per_dim.onnx", x=images, context=labels)
          ["bits_per_dim"], flow.bits_per_dim(images, labels))
    z = run_onnx(directory / "encode.onnx", x=images, context=labels)["z"]
    close(z, flow.encode(images, labels))
    np.testing.assert_array_equal(
        run_onnx(directory / "decode.onnx", z=z, context=labels)["x"], images)


def test_bad_export_arguments_are_refused(tmp_path):
    flow = kf.RealNVP(event_shape=(2,), num_layers=1, hidden_units=[4])
    with pytest.raises(ValueError, match="'tf_saved_model' or 'onnx'; got 'tflite'"):
        flow.export(tmp_path / "m", format="tflite")
    with pytest.raises(TypeError, match="keras_flows `Flow`"):
        export_saved_model(keras.Sequential([keras.layers.Dense(1)]), tmp_path / "m")
    assert not (tmp_path / "m").exists()
