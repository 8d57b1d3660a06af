"""Data-parallel training on the engines Keras already has.

    with keras_flows.distribute.scope("mirrored"):      # or "data_parallel", "ddp"
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
- "ddp": one PyTorch process per device, started by `torchrun` (which sets
  RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT), PyTorch backend. The scope
  joins the process group (NCCL on GPUs, else gloo) and `Flow.train_step`
  averages every gradient over the processes, as `DistributedDataParallel`
  does; each process passes its own part of every global batch
  (`split_batch`).

Each replica gets an equal share of every global batch; ActNorm's start and
BatchNorm's statistics are those of the global batch (see
`cross_replica_mean`), so the replicas agree and
the results are those of one device on the same global batches.
"""

import contextlib
import os

import keras

DISTRIBUTIONS = {"none": None, "mirrored": "tensorflow", "data_parallel": "jax",
                 "ddp": "torch"}
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@contextlib.contextmanager
def scope(name):
    """A context in which to build and compile a model trained under `name`
    ("none", "mirrored", "data_parallel" or "ddp")."""
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
    elif name == "ddp":
        _join_process_group()
        yield
    else:
        with keras.distribution.DataParallel().scope():
            yield


def _join_process_group():
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    missing = [v for v in TORCHRUN_VARIABLES if v not in os.environ]
    if missing:
        raise ValueError(f"The distribution 'ddp' runs one process per device under torchrun "
                         f"(`torchrun --nproc-per-node=N -m keras_flows.train ...`); "
                         f"{', '.join(missing)} not set.")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def process_group():
    """`(index, count)` of this process among the PyTorch processes of "ddp";
    `(0, 1)` elsewhere."""
    if keras.backend.backend() != "torch":
        return 0, 1
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def average_gradients(model):
    """Under "ddp" with more than one process, makes every trainable variable
    of `model` average its gradient over the processes; nothing elsewhere.
    `Flow.train_step` calls it before each step, so `fit` and
    `train_on_batch` need nothing more.

    As `DistributedDataParallel` does, the communication overlaps
    backpropagation and goes in buckets: each gradient joins the open bucket
    as soon as it is complete (in the order backpropagation reaches them,
    the same in every process); a bucket of `BUCKET_BYTES` or more is
    flattened and its all-reduce starts without waiting; the end of
    backpropagation starts the last one, waits for them all and divides each
    sum by the number of processes, before the optimizer reads a gradient.
    One all-reduce a bucket, not one a variable: the CIFAR-10 Glow preset
    has 270 trainable variables and 3 MB of gradients, one bucket."""
    global _bucket_bytes
    if process_group()[1] == 1:
        return
    _BUCKET.clear()      # empty, unless the last backward pass failed
    _bucket_bytes = 0
    _finish_averages()
    for variable in model.trainable_variables:
        parameter = variable.value
        if not getattr(parameter, "_keras_flows_averaged", False):
            parameter.register_post_accumulate_grad_hook(_add_to_bucket)
            parameter._keras_flows_averaged = True


BUCKET_BYTES = 25 * 2**20   # DistributedDataParallel's default bucket_cap_mb
_BUCKET = []    # complete gradients whose all-reduce has not started
_bucket_bytes = 0   # their size
_PENDING = []   # (work, flat sum, gradients) of the all-reduces started this pass


def _add_to_bucket(parameter):
    import torch

    global _bucket_bytes
    gradient = parameter.grad
    if not _BUCKET and not _PENDING:   # the first this pass: finish them all when it ends
        torch.autograd.Variable._execution_engine.queue_callback(_finish_averages)
    if _BUCKET and (gradient.dtype, gradient.device) != (_BUCKET[0].dtype, _BUCKET[0].device):
        _start_bucket()
    _BUCKET.append(gradient)
    _bucket_bytes += gradient.numel() * gradient.element_size()
    if _bucket_bytes >= BUCKET_BYTES:
        _start_bucket()


def _start_bucket():
    import torch
    import torch.distributed as dist

    global _bucket_bytes
    gradients = list(_BUCKET)
    _BUCKET.clear()
    _bucket_bytes = 0
    flat = torch.cat([g.reshape(-1) for g in gradients])
    _PENDING.append((dist.all_reduce(flat, async_op=True), flat, gradients))


def _finish_averages():
    if _BUCKET:
        _start_bucket()
    if not _PENDING:
        return
    import torch.distributed as dist

    count = dist.get_world_size()
    for work, flat, gradients in _PENDING:
        work.wait()
        flat.div_(count)
        offset = 0
        for gradient in gradients:
            gradient.copy_(flat[offset:offset + gradient.numel()].view_as(gradient))
            offset += gradient.numel()
    _PENDING.clear()


def mean_over_processes(value):
    """The mean of the float `value` over the processes of "ddp"; `value` elsewhere."""
    count = process_group()[1]
    if count == 1:
        return value
    import torch
    import torch.distributed as dist

    # NCCL (the "ddp" choice on GPUs) reduces CUDA tensors only.
    device = (torch.device("cuda", torch.cuda.current_device())
              if dist.get_backend() == "nccl" else "cpu")
    total = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total) / count


def split_batch(model, batch):
    """`batch` (an array, or a dict/tuple of arrays with the same rows) as
    `model.train_on_batch` should receive it.

    Under a TensorFlow strategy with R > 1 replicas, the R equal consecutive
    parts of the global batch, one per replica: `train_on_batch` would
    otherwise give every replica the whole batch. Under "ddp" with R > 1
    processes, this process's part. Elsewhere `batch` itself (JAX's
    `DataParallel` shards the global batch on its own).
    """
    backend = keras.backend.backend()
    if backend == "torch":
        index, replicas = process_group()
    elif backend == "tensorflow":
        strategy = model.distribute_strategy
        replicas = strategy.num_replicas_in_sync
    else:
        return batch
    if replicas == 1:
        return batch
    rows = len(keras.tree.flatten(batch)[0])
    if rows % replicas:
        raise ValueError(f"A batch of {rows} rows cannot be split evenly over {replicas} "
                         f"replicas; use a batch size divisible by {replicas}.")
    size = rows // replicas
    if backend == "torch":
        return keras.tree.map_structure(lambda a: a[index * size:(index + 1) * size], batch)

    def part(context):
        start = context.replica_id_in_sync_group * size
        return keras.tree.map_structure(lambda a: a[start:start + size], batch)

    return strategy.experimental_distribute_values_from_function(part)


def cross_replica_mean(x):
    """The mean of `x` over the replicas of a data-parallel step; `x` itself
    elsewhere.

    Each replica passes its own value (e.g. a statistic of its share of the
    batch) and gets back the mean over all replicas, differentiably.

    - TensorFlow: inside a `tf.distribute` replica context with more than one
      replica (`MirroredStrategy`, `MultiWorkerMirroredStrategy`),
      `ReplicaContext.all_reduce(MEAN, x)`, whose gradient is the all-reduced
      mean of the replicas' gradients.
    - JAX: `x`. Under `keras.distribution.DataParallel` the train step is one
      program over the global batch, sharded across the devices, so a
      `keras.ops` reduction over the batch is already global.
    - PyTorch: when `torch.distributed` is initialised with more than one
      process (DistributedDataParallel under `torchrun`), the sum over the
      processes by `torch.distributed.nn.functional.all_reduce` (which
      carries gradients) divided by their number.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return x
        return context.all_reduce(tf.distribute.ReduceOp.MEAN, x)
    if backend == "torch":
        count = process_group()[1]
        if count == 1:
            return x
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(x) / count
    return x


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
