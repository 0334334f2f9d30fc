"""Where a run executes: the tf.distribute strategy, the global batch, the chief, the precision.

A recipe's `runtime` section says where and how to run without changing what
the recipe means. This module turns it into TensorFlow's own machinery
(`tf.distribute` strategies, Keras dtype policies), so the trainer is the same
code on one CPU, on eight GPUs, on several machines or on a TPU.

Strategies are registry entries (`register_strategy`); the trainer asks a
`Placement` for the scope to build and compile in, the global batch, whether
this process is the chief (the only one that writes the run directory) and
the model to hand to `fit()`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import keras

from tlkit import lingering
from tlkit.errors import TlkitError
from tlkit.recipe import Recipe, Runtime

STRATEGIES: dict[str, Callable[[Runtime], Any]] = {}


def register_strategy(name: str) -> Callable[[Callable[[Runtime], Any]], Callable[[Runtime], Any]]:
    """A `runtime.strategy` value: a function from the runtime section to a strategy (None: TF's default)."""

    def add(fn: Callable[[Runtime], Any]) -> Callable[[Runtime], Any]:
        STRATEGIES[name] = fn
        return fn

    return add


# ----------------------------------------------------------------------------- cluster and devices


def cluster_config() -> dict[str, Any] | None:
    """TF_CONFIG as a dict (None when unset), or a one-line error naming what is wrong with it."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TlkitError(f"TF_CONFIG is not valid JSON ({exc}); see README 'Several machines'") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict) or not isinstance(config.get("task"), dict):
        raise TlkitError(
            'TF_CONFIG must look like {"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}'
        )
    return config


def cluster_workers(config: dict[str, Any] | None) -> int:
    """How many processes train together: chief + workers (parameter servers and evaluators take no part)."""
    if not config:
        return 1
    return len(training_addresses(config))


def training_addresses(config: dict[str, Any]) -> list[str]:
    """host:port of every process that trains: chief + workers (parameter servers and evaluators take no part)."""
    return [str(a) for kind in ("chief", "worker") for a in config["cluster"].get(kind, [])]


def workers_on_this_host(config: dict[str, Any] | None) -> int:
    """How many of the cluster's training processes share this task's host (1 without TF_CONFIG)."""
    if not config:
        return 1
    task = config["task"]
    mine = config["cluster"].get(task.get("type", "worker"), [])
    index = int(task.get("index", 0))
    if not 0 <= index < len(mine):
        return 1
    host = str(mine[index]).rsplit(":", 1)[0]
    return max(1, sum(a.rsplit(":", 1)[0] == host for a in training_addresses(config)))


def worker_threads(config: dict[str, Any] | None) -> int:
    """TensorFlow threads (intra- and inter-op) for each worker on this host; 0 leaves TensorFlow's own choice:
    one worker here, or the user set TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS (theirs stand)."""
    local = workers_on_this_host(config)
    if local <= 1 or os.environ.get("TF_NUM_INTRAOP_THREADS") or os.environ.get("TF_NUM_INTEROP_THREADS"):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // local)


def share_cpus(config: dict[str, Any] | None) -> None:
    """Give this worker its share of the host's cores (`worker_threads`).

    Workers on one host each start thread pools sized for every core, so two
    workers on 2 cores run 2x as many busy threads as cores, and their per-step
    all-reduce waits on whichever worker the scheduler left behind. Must run
    before TensorFlow starts its runtime (the strategy is created right after,
    and says so if it has started).
    """
    import tensorflow as tf

    threads = worker_threads(config)
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pass


def _devices(runtime: Runtime) -> list[str] | None:
    """runtime.devices checked against this machine's logical devices (None: let TensorFlow choose)."""
    if not runtime.devices:
        return None
    import tensorflow as tf

    have = {}
    for device in tf.config.list_logical_devices():
        spec = tf.DeviceSpec.from_string(device.name)
        have[(spec.device_type.upper(), spec.device_index)] = f"/{spec.device_type.lower()}:{spec.device_index}"
    chosen = []
    for name in runtime.devices:
        try:
            spec = tf.DeviceSpec.from_string(name)
        except (ValueError, TypeError):
            spec = None
        key = (spec.device_type.upper(), spec.device_index) if spec is not None and spec.device_type else None
        if key not in have:
            raise TlkitError(
                f"runtime.devices names '{name}', which this machine does not have; it has: {', '.join(sorted(have.values()))}"
            )
        chosen.append(have[key])
    return chosen


# ----------------------------------------------------------------------------- strategies


@register_strategy("auto")
def _auto(runtime: Runtime) -> Any:
    """Several workers in TF_CONFIG: multi_worker; several GPUs (or devices named): mirrored; else one device."""
    import tensorflow as tf

    if cluster_workers(cluster_config()) > 1:
        return _multi_worker(runtime)
    if len(runtime.devices) > 1 or len(tf.config.list_logical_devices("GPU")) > 1:
        return _mirrored(runtime)
    if runtime.devices:
        return _one_device(runtime)
    return None  # TensorFlow's default strategy: exactly the single-process path


@register_strategy("one_device")
def _one_device(runtime: Runtime) -> Any:
    import tensorflow as tf

    devices = _devices(runtime)
    if devices and len(devices) > 1:
        raise TlkitError(f"runtime.strategy one_device takes one device; runtime.devices names {len(devices)}: use mirrored")
    device = devices[0] if devices else ("/gpu:0" if tf.config.list_logical_devices("GPU") else "/cpu:0")
    return tf.distribute.OneDeviceStrategy(device)


@register_strategy("mirrored")
def _mirrored(runtime: Runtime) -> Any:
    """Synchronous data parallelism over the GPUs of one machine (or the devices named)."""
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(devices=_devices(runtime))


@register_strategy("multi_worker")
def _multi_worker(runtime: Runtime) -> Any:
    """Synchronous data parallelism over several processes/machines described by TF_CONFIG."""
    import tensorflow as tf

    if cluster_config() is None:
        raise TlkitError(
            "runtime.strategy multi_worker needs TF_CONFIG (the cluster and this process's place in it); "
            "start local workers with `tlkit local-workers N finetune RECIPE`, or see README 'Several machines'"
        )
    share_cpus(cluster_config())
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except (RuntimeError, ValueError) as exc:
        raise TlkitError(
            f"could not start the multi-worker strategy ({str(exc).splitlines()[0]}); it must be created before "
            "TensorFlow runs anything, so run each worker as a fresh `tlkit finetune` process"
        ) from None


@register_strategy("tpu")
def _tpu(runtime: Runtime) -> Any:
    """A Cloud TPU (VM: runtime.tpu 'local'; TPU node: its name or grpc:// address)."""
    import tensorflow as tf

    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=runtime.tpu or None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except Exception as exc:  # the resolver raises several types, none of them a user's bug
        raise TlkitError(
            f"runtime.strategy tpu: no TPU found ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "on a TPU VM set runtime.tpu=local, else the TPU's name"
        ) from None


def make_strategy(runtime: Runtime) -> Any:
    """The recipe's strategy, or None for TensorFlow's default (one device, no distribution)."""
    if runtime.strategy not in STRATEGIES:
        raise TlkitError(f"unknown runtime.strategy '{runtime.strategy}'; strategies: {', '.join(STRATEGIES)}")
    return STRATEGIES[runtime.strategy](runtime)


# ----------------------------------------------------------------------------- precision


@contextmanager
def precision(policy: str) -> Iterator[None]:
    """Keras's global dtype policy for the block; the previous one is restored after, so later runs are unaffected."""
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def save_float32(path: Path, build: Callable[[], keras.Model]) -> None:
    """Rewrite a mixed-precision checkpoint as a float32 model with the same weights.

    Mixed precision is a training speed lever; evaluate, export and predict read a
    float32 model, which runs on any device (float16 kernels are slow or missing on CPUs).
    """
    path = Path(path)
    trained = keras.saving.load_model(path, compile=False)
    with precision("float32"):
        model = build()
    model.set_weights(trained.get_weights())
    tmp = path.with_name(f".{path.stem}.f32tmp{path.suffix}")
    model.save(tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- placement


class _CollectiveModel(keras.Model):
    """fit() under MultiWorkerMirroredStrategy.

    Keras reduces each step's logs across workers with `reduce(MEAN, axis=0)`,
    which fails on the scalar logs of the built-in steps; giving them a length-1
    axis makes that reduce a plain mean. Epoch logs (what callbacks see) are read
    from the metrics themselves, summed over all workers. Build it outside the
    strategy's scope (its layers come from a model built inside), compile and fit
    inside: a model created in the scope makes Keras reduce a whole data batch,
    which multi-worker collectives reject.
    """

    def train_step(self, data: Any) -> dict[str, Any]:
        return {k: keras.ops.reshape(v, (1,)) for k, v in super().train_step(data).items()}

    def test_step(self, data: Any) -> dict[str, Any]:
        return {k: keras.ops.reshape(v, (1,)) for k, v in super().test_step(data).items()}


class KeepIterators(keras.callbacks.Callback):
    """Holds every tf.distribute iterator fit() has made until the process ends (`tlkit.lingering`).

    Keras drops the validation iterator as the next pass starts and the training one as fit() returns, and
    each drop can stall for seconds (see `tlkit.lingering`). They are found by their public type among the
    live objects after each validation pass, while Keras still refers to them (`per_worker` sees to it that
    no other iterator is made after it). A look costs 0.17 s on 2 cores (600,000 objects), once an epoch.
    """

    looked = False

    def _keep(self) -> None:
        import gc

        import tensorflow as tf

        for thing in gc.get_objects():
            if isinstance(thing, tf.distribute.DistributedIterator):
                lingering.hold(thing)
        self.looked = True

    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        self._keep()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if not self.looked:  # no validation pass: the training iterator is still to be found
            self._keep()


@dataclass
class Placement:
    """Where this process trains, and its part in the run."""

    strategy: Any  # a tf.distribute.Strategy, or None for TensorFlow's default
    kind: str  # the strategy that runs: default, one_device, mirrored, multi_worker, tpu
    precision: str
    chief: bool = True
    task: str = "chief"  # e.g. worker1
    workers: int = 1
    scratch: Path | None = None
    index: int = 0  # this worker's input shard (0 .. workers-1; the chief is 0)
    presharded: bool = False  # the pipelines hold only this worker's shard of the files (shard_bundle)
    host_share: tuple[int, int] = (1, 0)  # (workers on this host, threads each: worker_threads)

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync) if self.strategy is not None else 1

    @property
    def caches_features(self) -> bool:
        """The frozen-stage feature cache runs the backbone outside the strategy: not on a TPU's host."""
        return self.kind != "tpu"

    def scope(self) -> ContextManager[Any]:
        """Build and compile inside: variables become mirrored/replicated ones."""
        return self.strategy.scope() if self.strategy is not None else nullcontext()

    def effective(self, rec: Recipe) -> Recipe:
        """The recipe as trained: `train.batch_size` is per replica, so the global batch is it times
        the replicas; with `runtime.scale_learning_rate` every stage's rate is multiplied by them too."""
        n = self.replicas
        if n == 1:
            return rec
        stages = rec.train.stages
        if rec.runtime.scale_learning_rate:
            stages = [s.model_copy(update={"learning_rate": s.learning_rate * n}) for s in stages]
        train = rec.train.model_copy(update={"batch_size": rec.train.batch_size * n, "stages": stages})
        return rec.model_copy(update={"train": train})

    def for_fit(self, model: keras.Model) -> keras.Model:
        """The model to compile and fit (call outside `scope()`): a model sharing `model`'s layers that
        belongs to the strategy, so Keras builds optimizer and metric state before tracing the step
        (a model made outside the scope, like the feature-cache head, would build it inside a replica)."""
        if self.strategy is None:
            return model
        if self.kind == "multi_worker":
            return _CollectiveModel(model.inputs, model.outputs, name=model.name)
        with self.scope():
            return keras.Model(model.inputs, model.outputs, name=model.name)

    def shard(
        self, ds: Any, count: int | None = None, batch: int = 0, class_weight: Any = None, training: bool = False
    ) -> Any:
        """A pipeline as fit() should take it. Pipelines of image files hold this worker's shard already
        (`shard_bundle`; `count`: the examples of all workers together, `batch` the global batch): each worker
        feeds its own batches (`per_worker`), with the class weights as sample weights (fit() cannot add them to
        a distributed dataset). Other sources (TFDS): each worker reads the whole (seeded, identically ordered)
        pipeline and keeps its share of every global batch (tf.data auto-sharding by data)."""
        if self.workers <= 1:
            return ds
        if self.takes_shards and count is not None:
            if class_weight:
                import tensorflow as tf

                weights = tf.constant([class_weight[i] for i in range(len(class_weight))], tf.float32)
                ds = ds.map(lambda x, y: (x, y, tf.gather(weights, tf.argmax(y, axis=-1))))
            return self.per_worker(ds, count, batch, training)
        import tensorflow as tf

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return ds.with_options(options)

    def steps_per_epoch(self, count: int | None, batch: int) -> int | None:
        """The steps of an epoch of `per_worker` batches (None where fit() counts them itself)."""
        if not (self.takes_shards and count is not None):
            return None
        local_replicas = max(1, self.replicas // self.workers)
        per_replica = max(1, batch // self.replicas)
        return max(1, math.ceil(balanced_count(count, self.workers, 0) / (per_replica * local_replicas)))

    def fit_callbacks(self) -> list[keras.callbacks.Callback]:
        """What fit() needs here besides the trainer's own callbacks: a worker fed by `per_worker` holds its
        iterators (streams laid out otherwise would have Keras make a buffered one ahead every epoch)."""
        return [KeepIterators()] if self.kind == "multi_worker" and self.takes_shards else []

    @property
    def takes_shards(self) -> bool:
        """Whether fit() gets this worker's own batches (then it must not be given class weights itself)."""
        return self.workers > 1 and self.presharded

    def per_worker(self, ds: Any, count: int, batch: int, training: bool = False) -> Any:
        """This worker's batches of its shard, laid out so that every worker has the same number of steps, none
        of them empty (an empty batch would put NaN into BatchNorm statistics): the global batch of each step
        is every worker's next local batch, and an epoch shows each of the `count` examples once.

        Each iterator fit() makes of it is held to the end of the process (`KeepIterators`), so fit() should
        make few, and none ahead of need: the training stream repeats (fit() is given `steps_per_epoch`: one
        iterator per fit() instead of one per epoch), and the validation stream does not say its length (Keras
        then makes its iterator when a pass starts, not one ahead for the next pass, and runs it to its end,
        which leaves nothing buffered in it)."""
        import tensorflow as tf

        local_replicas = max(1, self.replicas // self.workers)
        parts = self.steps_per_epoch(count, batch) * local_replicas  # one element per local replica and step
        mine = balanced_count(count, self.workers, self.index)
        sizes = [mine // parts + (1 if i < mine % parts else 0) for i in range(parts)]
        local = ds.rebatch(sizes).apply(tf.data.experimental.assert_cardinality(parts))
        local = local.repeat() if training else local.filter(lambda *_: True)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        local = local.with_options(options)
        return self.strategy.distribute_datasets_from_function(lambda _context: local)

    def shard_bundle(self, bundle: Any) -> Any:
        """The bundle this worker trains on: its share of every split of image files, as many files as each
        other worker (give or take one), chosen among the files its scan decoded (`tlkit.data.scan.shard_of`)."""
        if self.workers <= 1:
            return bundle
        from dataclasses import replace

        splits = {}
        for name, split in bundle.splits.items():
            if split.image_files and split.paths is not None and split.size >= self.workers:
                split = split.subset(balanced_shard(split.paths, self.workers)[self.index])
                self.presharded = True
            splits[name] = split
        return replace(bundle, splits=splits)

    def scan_sharing(self) -> dict[str, Any]:
        """How this process shares the image check with the other workers (`tlkit.data.scan.scan_options`)."""
        if self.workers <= 1 or self.kind != "multi_worker":
            return {}
        import tensorflow as tf

        strategy = self.strategy

        def all_sum(array: Any) -> Any:
            value = tf.constant(array)
            per_replica = strategy.run(lambda: tf.identity(value))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()

        return {"workers": self.workers, "index": self.index, "all_sum": all_sum}

    def write_dir(self, run_dir: Path | None) -> Path:
        """Where this process writes. The chief: the run directory. Another worker: a scratch folder,
        seeded from the chief's run directory when it exists (a resumed run), removed at the end.

        Every worker runs the same saves and callbacks (collectives must match) and
        restores the same backup, so BackupAndRestore works under multi-worker;
        resuming needs the run directory visible to all workers (shared storage).
        """
        if self.chief:
            raise ValueError("the chief writes the run directory itself")
        if self.scratch is None:
            self.scratch = Path(tempfile.mkdtemp(prefix=f"tlkit-{self.task}-"))
            if run_dir is not None and Path(run_dir).is_dir():
                _copy_resumable(Path(run_dir), self.scratch)
        return self.scratch

    def describe(self) -> str:
        where = {"default": "one device (no distribution)"}.get(self.kind, self.kind)
        parts = [f"{where}, {self.replicas} replica(s)"]
        if self.workers > 1:
            parts.append(f"{self.workers} workers, this one {self.task}{' (chief)' if self.chief else ''}")
        local, threads = self.host_share
        if local > 1:
            each = f"{threads} CPU thread(s) each" if threads else "threads as TF_NUM_INTRAOP_THREADS says"
            parts.append(f"{local} workers share this host: {each}")
        parts.append(f"precision {self.precision}")
        return ", ".join(parts)


def balanced_count(count: int, workers: int, index: int) -> int:
    """How many of `count` examples worker `index` holds: `count // workers`, one more for the first ones."""
    return count // workers + (1 if index < count % workers else 0)


def balanced_shard(paths: list[str], workers: int) -> list[list[int]]:
    """Indices of `paths` per worker: balanced (`balanced_count`), each file with the worker whose scan decoded
    it (`tlkit.data.scan.shard_of`) where the balance allows; the same answer in every process."""
    from tlkit.data.scan import shard_of

    owned: list[list[int]] = [[] for _ in range(workers)]
    for i, path in enumerate(paths):
        owned[shard_of(path, workers)].append(i)
    quota = [balanced_count(len(paths), workers, w) for w in range(workers)]
    spare = [i for w in range(workers) for i in owned[w][quota[w]:]]
    shards = [owned[w][: quota[w]] for w in range(workers)]
    for w in range(workers):
        need = quota[w] - len(shards[w])
        shards[w], spare = sorted(shards[w] + spare[:need]), spare[need:]
    return shards


def _copy_resumable(run_dir: Path, to: Path) -> None:
    """The files a run resumes from (state, stage weights, history, backups); the chief may be writing
    beside them, so its temporary files are skipped and a file that vanishes meanwhile is no error."""
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        if not path.is_file() or rel.parts[0] in ("cache", "tensorboard") or any(p.startswith(".") for p in rel.parts):
            continue
        (to / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(path, to / rel)
        except FileNotFoundError:
            continue


def _task_of(strategy: Any) -> tuple[bool, str, int, int]:
    """(chief?, task name, workers, input shard) from the strategy's cluster resolver; the chief is the
    `chief` task, else worker 0 (TensorFlow's convention), and reads shard 0."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True, "chief", 1, 0
    spec = resolver.cluster_spec().as_dict()
    workers = sum(len(spec.get(kind, [])) for kind in ("chief", "worker")) or 1
    kind, index = resolver.task_type, int(resolver.task_id or 0)
    chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in spec)
    shard = 0 if kind == "chief" else index + (1 if "chief" in spec else 0)
    return chief, f"{kind}{index}", workers, shard


def _kind_of(strategy: Any) -> str:
    import tensorflow as tf

    if strategy is None:
        return "default"
    for cls, kind in (
        (tf.distribute.MultiWorkerMirroredStrategy, "multi_worker"),
        (tf.distribute.MirroredStrategy, "mirrored"),
        (tf.distribute.TPUStrategy, "tpu"),
    ):
        if isinstance(strategy, cls):
            return kind
    return "one_device"


@contextmanager
def placed(runtime: Runtime) -> Iterator[Placement]:
    """The strategy and precision of one run; the dtype policy is restored and a worker's scratch removed after."""
    strategy = make_strategy(runtime)
    kind = _kind_of(strategy)
    chief, task, workers, index = _task_of(strategy) if kind == "multi_worker" else (True, "chief", 1, 0)
    place = Placement(strategy, kind, runtime.precision, chief, task, workers, index=index)
    if kind == "multi_worker":
        config = cluster_config()
        place.host_share = (workers_on_this_host(config), worker_threads(config))
    try:
        with precision(runtime.precision):
            yield place
    finally:
        if place.scratch is not None:
            shutil.rmtree(place.scratch, ignore_errors=True)
