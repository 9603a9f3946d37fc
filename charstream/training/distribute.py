"""Training on several devices or machines through tf.distribute.

`--strategy mirrored` is `tf.distribute.MirroredStrategy` over the local devices;
`--strategy multiworker` is `tf.distribute.MultiWorkerMirroredStrategy` across
processes or machines described by the standard `TF_CONFIG` environment variable.
Either way Keras's own `fit` runs the training; this module holds what the
strategies need around it: the cluster as `TF_CONFIG` describes it, `Cluster`
(this process's strategy, replicas and whether it writes: the one object that
knows about workers), the per-worker input pipeline, and a workaround that lets
Keras 3 `fit` run under `MultiWorkerMirroredStrategy` at all
(keras-team/keras#20585).

TensorFlow is imported inside the functions: `parse_tf_config` runs before it,
once per process (`charstream.training.plan` keeps its `Task`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys

import numpy as np

from ..config import ConfigError

TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')


@dataclasses.dataclass(frozen=True)
class Task:
    """This process's place in the cluster `TF_CONFIG` describes."""

    kind: str          # "worker" or "chief"
    index: int
    workers: int       # processes that train, the chief included
    is_chief: bool     # the one process that writes the run directory

    def __str__(self) -> str:
        return f"{self.kind} {self.index} of {self.workers}"


def parse_tf_config(environ=os.environ) -> Task:
    """Read and check `TF_CONFIG` for `--strategy multiworker`.

    The chief is task `chief` if the cluster has one, else `worker` 0 (TensorFlow's
    own rule). Only `chief` and `worker` tasks train; parameter servers and
    evaluators belong to other strategies.

    Raises:
        ConfigError: quoting the variable, if it is missing or malformed.
    """
    raw = environ.get("TF_CONFIG")
    if not raw:
        raise ConfigError(
            "--strategy multiworker needs the TF_CONFIG environment variable, the same "
            f"cluster on every worker and this worker's own task, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}'")
    try:
        doc = json.loads(raw)
        cluster, task = doc["cluster"], doc["task"]
        kind, index = task["type"], task["index"]
        members = {name: list(cluster[name]) for name in cluster}
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(
            f"TF_CONFIG={raw!r}: expected JSON with \"cluster\" and \"task\" "
            f"({type(err).__name__}: {err}), e.g. {TF_CONFIG_EXAMPLE}") from None
    other = sorted(set(members) - {"chief", "worker"})
    if other:
        raise ConfigError(f"TF_CONFIG={raw!r}: --strategy multiworker trains with "
                          f"\"chief\" and \"worker\" tasks only, got {other}")
    if kind not in ("chief", "worker"):
        raise ConfigError(f"TF_CONFIG={raw!r}: task type must be \"worker\" or \"chief\", got {kind!r}")
    n_kind = len(members.get(kind, []))
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n_kind:
        raise ConfigError(f"TF_CONFIG={raw!r}: task index must be in [0, {n_kind}) "
                          f"for the {n_kind} {kind} addresses, got {index!r}")
    if len(members.get("chief", [])) > 1:
        raise ConfigError(f"TF_CONFIG={raw!r}: at most one chief, got {members['chief']}")
    is_chief = kind == "chief" or ("chief" not in members and index == 0)
    workers = sum(len(v) for v in members.values())
    return Task(kind, index, workers, is_chief)


@dataclasses.dataclass
class Cluster:
    """This process's part in training: the strategy, its replicas, its task under
    `--strategy multiworker` (None otherwise), and whether it writes the run
    directory (only the chief does). Every multi-worker difference goes through it.
    """

    strategy: object
    task: Task | None = None

    @classmethod
    def start(cls, config, task: Task | None = None) -> "Cluster":
        """The strategy the config asks for; `task` is this process's under
        multiworker (the plan read it from TF_CONFIG), and this waits for every
        worker."""
        if task is not None:
            print(f"{task}: waiting for every worker in TF_CONFIG", flush=True)
        cluster = cls(make_strategy(config), task)
        if task is not None:
            print(f"{task}{' (chief)' if cluster.writer else ''}: {cluster.replicas} replicas "
                  f"across {task.workers} workers, global batch "
                  f"{cluster.global_batch(config.batch_size)}", flush=True)
        elif cluster.replicas > 1:
            devices = ", ".join(cluster.strategy.extended.worker_devices)
            print(f"{cluster.replicas} replicas ({devices}), global batch "
                  f"{cluster.global_batch(config.batch_size)}", flush=True)
        return cluster

    @property
    def multiworker(self) -> bool:
        return self.task is not None

    @property
    def writer(self) -> bool:
        return self.task is None or self.task.is_chief

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    def global_batch(self, batch_size: int) -> int:
        """--batch-size is per replica; each step consumes the global batch, split
        evenly over the replicas. The learning rate is not rescaled: pass
        --learning-rate yourself when the global batch grows (linear scaling is
        the usual rule)."""
        return batch_size * self.replicas

    def check_agreement(self, config, corpus_sha256: str, initial_epoch: int, checkpoint) -> None:
        """Fail unless every worker has the same settings, corpus and checkpoint."""
        settings = {k: v for k, v in dataclasses.asdict(config).items()
                    if k not in ("data", "strategy", "cpu_devices", "max_time")}  # may differ
        check_agreement(self.strategy, json.dumps(
            {"settings": settings, "corpus": corpus_sha256, "initial_epoch": initial_epoch,
             "checkpoint": checkpoint.name if checkpoint else None}, sort_keys=True))

    def keras_context(self, model):
        """Where `fit` and `evaluate` run: the workaround under multiworker."""
        return multiworker_keras(model, self.strategy) if self.multiworker else contextlib.nullcontext()

    @staticmethod
    def peer_failure(plan, err: BaseException) -> str | None:
        """The message for a worker that failed or left under multiworker (a
        TensorFlow collective error), or None for any other exception."""
        task = plan.task
        if task is None or not is_peer_failure(err):
            return None
        done, _ = plan.run.newest_checkpoint()
        detail = " ".join(str(err).split())[:300] or type(err).__name__
        return (f"{task}: training stopped because a worker failed or left "
                f"({type(err).__name__}: {detail}); {plan.run} holds {done} finished epochs; "
                f"restart every worker with: {plan.restart}")


def intra_op_threads(config) -> int | None:
    """`--intra-op-threads`, or by default 1 in stream mode (None: TensorFlow's).

    A stream step is hundreds of small ops (the LSTM(128) step's matmuls are
    32 x 128 by 128 x 512). Split across the cores, each op pays for the handing
    over (16% of a profile of the step, in Eigen's thread pool); whole on one core
    each, they run two at a time on TensorFlow's inter-op threads instead:
    `python benchmarks/lstm_kernels.py` with `TF_NUM_INTRAOP_THREADS=1` took 0.83-0.95 s
    against 0.99-1.24 s, and 11.9 s against 14.9 s for the large preset's shapes, on
    2 cores. The training is the same bit for bit (`tests/test_paths.py`; a one-epoch
    run of the large preset's layers matched byte for byte too).
    """
    if config.intra_op_threads is not None:
        return config.intra_op_threads
    return 1 if config.mode == "stream" else None


def set_threads(config) -> None:
    """Size TensorFlow's intra-op thread pool, which is only possible before
    TensorFlow starts in this process (as in the command line). A caller in whose
    process it already started keeps the pool it has; an explicit
    `--intra-op-threads` then says so on stderr."""
    import tensorflow as tf

    threads = intra_op_threads(config)
    if threads is None or tf.config.threading.get_intra_op_parallelism_threads() == threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:
        if config.intra_op_threads is not None:
            print(f"--intra-op-threads {threads}: TensorFlow had already started in this "
                  "process, which keeps its thread pool", file=sys.stderr, flush=True)


def make_strategy(config):
    """The tf.distribute strategy the config asks for.

    `cpu_devices > 1` splits the CPU into logical devices first, which must happen
    before TensorFlow initialises its devices (no TF op may run before this), and so
    must `MultiWorkerMirroredStrategy`, which starts this worker's gRPC server and
    waits for every other worker.
    """
    import tensorflow as tf

    set_threads(config)
    if config.cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * config.cpu_devices)
    if config.strategy == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG
    if config.strategy == "mirrored":
        if config.cpu_devices > 1:
            return tf.distribute.MirroredStrategy(
                [d.name for d in tf.config.list_logical_devices("CPU")])
        return tf.distribute.MirroredStrategy()  # every local GPU, else the CPU
    return tf.distribute.get_strategy()


def check_agreement(strategy, what: str) -> None:
    """Fail unless every worker passes the same `what` (settings, corpus, epoch).

    Workers that disagree would train mirrored variables on different data or from
    different checkpoints and silently diverge; one all-gather at the start rules
    that out. Every worker must call this at the same point.

    Raises:
        RuntimeError: if any two workers passed different strings.
    """
    import tensorflow as tf

    digest = hashlib.sha256(what.encode("utf-8")).digest()
    mine = tf.constant(np.frombuffer(digest[:16], dtype=np.int32)[None])  # (1, 4)

    @tf.function
    def everyones():  # (replicas, 4): every replica's digest, on every worker
        return strategy.gather(strategy.run(lambda: tf.identity(mine)), axis=0)

    seen = everyones().numpy()
    if not (seen == seen[:1]).all():
        raise RuntimeError(
            "the workers disagree on the settings, the corpus or the checkpoint to start "
            "from: give every worker the same flags and corpus, and a run directory on a "
            f"filesystem they all share (this worker has: {what})")


def shard_steps(n_windows: int, global_batch: int, replicas: int) -> tuple[int, int]:
    """Steps per epoch and windows trained per epoch when every replica must get at
    least one window of every global batch (a smaller last batch is dropped).

    Raises:
        ConfigError: if not even one step is possible.
    """
    steps = math.ceil(n_windows / global_batch)
    last = n_windows - (steps - 1) * global_batch
    if last < replicas:
        steps, last = steps - 1, global_batch
    if steps < 1:
        raise ConfigError(f"{n_windows} windows cannot give each of {replicas} replicas "
                          "one: use more --samples or fewer workers")
    return steps, (steps - 1) * global_batch + last


def shard_starts(order, steps: int, replicas: int, first: int, local: int):
    """The window starts of replicas `first .. first + local` (one worker's), step by step.

    Global batch `b` of `order` (a `WindowBatches`) is cut into `replicas`
    contiguous chunks whose sizes differ by at most one; this yields chunks
    `first .. first + local - 1` of batch 0, then of batch 1, ... (`int64` arrays).
    """
    for b in range(steps):
        chunks = np.array_split(order.batch_starts(b), replicas)
        yield from chunks[first:first + local]


def worker_dataset(strategy, ids: np.ndarray, starts: range, global_batch: int,
                   seq_len: int, depth: int, shuffle: bool = False, seed: int = 0,
                   epochs: range | None = None):
    """This worker's share of `WindowBatches`, as a distributed dataset for `fit`.

    Step `b` of epoch `e` trains on the global batch `b` of `WindowBatches(ids,
    starts, global_batch, ..., seed, epoch=e)` (the order single-device training
    uses), cut into one chunk per replica in the cluster (`shard_starts`); a worker
    builds only its own replicas' chunks, so no two workers see the same window in
    an epoch.

    With `epochs`, the dataset runs through those epochs back to back, each with its
    own order (pass `steps_per_epoch` to `fit`, which then keeps one iterator);
    without, it repeats epoch 0's order forever (validation: pass `validation_steps`).

    Returns:
        `(dataset, steps, windows)`: the `tf.distribute` dataset, its steps per
        epoch, and the windows one epoch trains on (all workers together).
    """
    import tensorflow as tf

    from .batches import WindowBatches

    replicas = strategy.num_replicas_in_sync
    steps, windows = shard_steps(len(starts), global_batch, replicas)
    spec = (tf.TensorSpec((None, seq_len, depth), tf.float32),
            tf.TensorSpec((None, depth), tf.float32))

    def dataset_fn(context):
        local = replicas // context.num_input_pipelines   # replicas on this worker
        first = context.input_pipeline_id * local          # its first replica

        def chunks(epoch):  # one element per local replica per step
            order = WindowBatches(ids, starts, global_batch, seq_len, depth,
                                       shuffle=shuffle, seed=seed, epoch=int(epoch))
            for chunk in shard_starts(order, steps, replicas, first, local):
                yield order.build(chunk)

        def epoch_dataset(epoch):
            return tf.data.Dataset.from_generator(chunks, output_signature=spec, args=(epoch,))

        if epochs is None:
            data = epoch_dataset(0).repeat()
        else:
            data = tf.data.Dataset.range(epochs.start, epochs.stop).flat_map(epoch_dataset)
        options = tf.data.Options()
        # Sharded above, by construction: tf.data must not shard it again.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return data.with_options(options).prefetch(2)

    return strategy.distribute_datasets_from_function(dataset_fn), steps, windows


@contextlib.contextmanager
def multiworker_keras(model, strategy):
    """Let Keras 3 `fit` / `evaluate` run under `MultiWorkerMirroredStrategy`.

    Keras 3.x (keras-team/keras#20585) fails there twice: before the first step it
    all-reduces a sample batch (unnecessary: the model is built, and the reduction
    rejects the per-replica batch), and after every step it reduces each scalar
    metric with `axis=0`, which a scalar does not have. Inside this context the model
    takes its strategy from `strategy.scope()` (so the sample batch is skipped) and
    multi-worker means of scalars reduce over replicas only (`axis=None`), the
    same value Keras computes under `MirroredStrategy`.
    """
    import keras
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as keras_trainer

    if not (hasattr(keras_trainer, "reduce_per_replica")
            and hasattr(keras_trainer, "_collective_all_reduce_multi_worker")
            and hasattr(model, "_distribute_strategy")):
        raise RuntimeError(
            f"--strategy multiworker: Keras {keras.__version__} no longer has the internals "
            "charstream works around (keras-team/keras#20585); see whether that issue is "
            "fixed there, and train with --strategy mirrored or default meanwhile")
    original = keras_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy_, reduction="auto"):
        if (reduction in ("auto", "mean")
                and keras_trainer._collective_all_reduce_multi_worker(strategy_)):
            return tf.nest.map_structure(
                lambda v: strategy_.reduce("MEAN", v, axis=None), values)
        return original(values, strategy_, reduction)

    saved = model._distribute_strategy
    model._distribute_strategy = None
    keras_trainer.reduce_per_replica = reduce_per_replica
    try:
        with strategy.scope():
            yield
    finally:
        keras_trainer.reduce_per_replica = original
        model._distribute_strategy = saved


def is_peer_failure(err: BaseException) -> bool:
    """Whether `err` is TensorFlow reporting that a collective or a peer failed."""
    import tensorflow as tf

    return isinstance(err, tf.errors.OpError)
