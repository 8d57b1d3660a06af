"""Data-parallel training on the engines Keras already has.

    with keras_flows.distribute.scope("mirrored"):      # or "data_parallel"
        flow = keras_flows.Glow(...)
        flow.compile(optimizer="adamax")
    flow.fit(dataset)                                   # splits each global batch
    flow.train_on_batch(keras_flows.distribute.split_batch(flow, batch))

Names (`--distribution` of `keras_flows.train`):

- "none": one device.
- "mirrored": `tf.distribute.MirroredStrategy` over the local GPUs (or the
  logical CPU devices), TensorFlow backend.
- "data_parallel": `keras.distribution.DataParallel` over every JAX device,
  JAX backend; across hosts, call `keras.distribution.initialize()` (or
  `jax.distributed.initialize()`) first.

Each replica gets an equal share of every global batch; ActNorm's start and
BatchNorm's statistics are those of the global batch (see
`keras_flows.utils.backend.cross_replica_mean`), so the replicas agree and
the results are those of one device on the same global batches.
"""

import contextlib

import keras

DISTRIBUTIONS = {"none": None, "mirrored": "tensorflow", "data_parallel": "jax"}


@contextlib.contextmanager
def scope(name):
    """A context in which to build and compile a model trained under `name`
    ("none", "mirrored" or "data_parallel")."""
    if name not in DISTRIBUTIONS:
        raise ValueError(f"Unknown distribution {name!r}; expected one of "
                         f"{', '.join(map(repr, DISTRIBUTIONS))}.")
    needed, backend = DISTRIBUTIONS[name], keras.backend.backend()
    if needed is not None and needed != backend:
        raise ValueError(f"The distribution {name!r} needs the {needed} backend "
                         f"(KERAS_BACKEND={needed}); this process runs {backend}.")
    if name == "none":
        yield
    elif name == "mirrored":
        import tensorflow as tf

        with tf.distribute.MirroredStrategy().scope():
            yield
    else:
        with keras.distribution.DataParallel().scope():
            yield


def split_batch(model, batch):
    """`batch` (an array, or a dict/tuple of arrays with the same rows) as
    `model.train_on_batch` should receive it.

    Under a TensorFlow strategy with R > 1 replicas, the R equal consecutive
    parts of the global batch, one per replica: `train_on_batch` would
    otherwise give every replica the whole batch. Elsewhere `batch` itself
    (JAX's `DataParallel` shards the global batch on its own).
    """
    if keras.backend.backend() != "tensorflow":
        return batch
    strategy = model.distribute_strategy
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return batch
    rows = len(keras.tree.flatten(batch)[0])
    if rows % replicas:
        raise ValueError(f"A batch of {rows} rows cannot be split evenly over {replicas} "
                         f"replicas; use a batch size divisible by {replicas}.")
    size = rows // replicas

    def part(context):
        start = context.replica_id_in_sync_group * size
        return keras.tree.map_structure(lambda a: a[start:start + size], batch)

    return strategy.experimental_distribute_values_from_function(part)


def loss_share(loss):
    """A replica's share of `loss`, a mean over its part of the global batch:
    `loss / R` inside a TensorFlow replica context of R replicas, `loss`
    elsewhere.

    Keras's TensorFlow trainer sums the replicas' gradients and multiplies
    the reported loss by R (its own `keras.losses.Loss` objects divide by R),
    so a model whose `compute_loss` returns a plain mean must return this.
    JAX's `DataParallel` computes one loss over the global batch.
    """
    if keras.backend.backend() != "tensorflow":
        return loss
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return loss
    return loss / context.num_replicas_in_sync
