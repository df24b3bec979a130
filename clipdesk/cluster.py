"""Index on a Ray cluster: the work list is decoded and embedded by Ray Data actors, one model each.

Only the embedding moves. The driver (the machine running ``clipdesk index --engine ray``) scans,
diffs against the catalog and commits every batch itself, with the local pipeline's transactions
(:func:`pipeline.index_files` takes this engine as its ``engine``). So the catalog keeps one writer,
a killed driver resumes like a local run, and a batch that comes back twice (Ray retries the task
of a worker that died) is committed once.

The workers run :func:`pipeline.embed_locally`, the local engine itself, on their share of the
files: same decoders, same pixel budget, same model. The model comes from ``embedder_factory``, a
picklable callable (the core passes ``functools.partial(load_encoder, spec, ...)``) that each
actor calls once; so this module needs no model code and the workers import only the indexer. Workers read the files by the paths the
driver sees: the photos must be at the same paths on every node (a shared mount).

Ray is an optional dependency (``pip install 'clipdesk[cluster]'``), imported only when a job
starts.
"""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

from clipdesk.errors import ClipdeskError, ClusterError
from clipdesk.indexer.decode import PixelBudget
from clipdesk.indexer.pipeline import Embedded, ImageEmbedder, embed_locally
from clipdesk.indexer.scan import ScannedFile

# Files per Ray task, in model batches: a task's results reach the driver (progress, commits) when
# it ends, and are what a worker redoes when it dies. Two tasks run at once in each worker, so one
# decodes while the other is in the model.
BATCHES_PER_TASK = 2
INSTALL_HINT = "pip install 'clipdesk[cluster]'"
CONNECT_SECONDS = 5.0


def _ray():
    try:
        import ray
        import ray.data  # Ray Data ships as the "data" extra of ray
    except ImportError as e:
        raise ClusterError(f"--engine ray needs Ray Data ({e.name or 'ray'} is not installed): "
                           f"{INSTALL_HINT}") from None
    return ray


class _EmbedWorker:
    """A Ray Data actor: loads the model once, then decodes and embeds the batches it is given.

    Input columns: ``i`` (position in the driver's work list), ``path`` (bytes), ``mtime_ns``
    (decimal text: any integer). Output: ``i``, ``ok``, ``vector`` (n, dim) float32 (zeros for a
    failure), ``failure`` (its reason, "" when ok) and the catalog fields decoding found.
    """

    def __init__(self, embedder_factory: Callable[[], ImageEmbedder], batch_size: int, threads: int):
        self.batch_size = batch_size
        self.threads = threads
        self.budget = PixelBudget()  # one decoding memory bound for the calls that run at once
        self.broken = ""
        try:
            self.embedder = embedder_factory()
            side = int(self.embedder.min_side)
            # A blank image through the model: its output width (and a warm model for the first batch).
            probe = self.embedder.embed([self.embedder.prepare(Image.new("RGB", (side, side)))])
            self.dim = int(np.asarray(probe).shape[1])
        except Exception as e:  # noqa: BLE001 - told to the driver as data: an actor that fails to
            # start is retried by Ray forever, with a traceback on the console each time
            self.broken = str(e) if isinstance(e, ClipdeskError) else f"{type(e).__name__}: {e}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.broken:
            return {"i": np.asarray(batch["i"], np.int64)[:1], "broken": np.array([self.broken], object)}
        files = [ScannedFile(os.fsdecode(bytes(p)), 0, int(m)) for p, m in zip(batch["path"], batch["mtime_ns"])]
        done = [e for part in embed_locally(files, self.embedder, self.batch_size, self.threads, budget=self.budget)
                for e in part]
        n = len(done)
        ok = np.array([e.failure is None for e in done], bool)
        vectors = np.zeros((n, self.dim), np.float32)
        failure = np.full(n, "", dtype=object)
        content_hash = np.full(n, "", dtype=object)
        width = np.zeros(n, np.int64)
        height = np.zeros(n, np.int64)
        taken = np.full(n, np.nan)
        for k, e in enumerate(done):
            if e.failure is not None:
                failure[k] = e.failure
                continue
            vectors[k] = e.vector
            content_hash[k] = e.record["hash"]
            width[k], height[k] = e.record["width"], e.record["height"]
            if e.record["taken"] is not None:
                taken[k] = e.record["taken"]
        return {"i": np.asarray(batch["i"], np.int64), "broken": np.full(n, "", dtype=object), "ok": ok, "vector": vectors, "failure": failure,
                "hash": content_hash, "width": width, "height": height, "taken": taken}


class RayEngine:
    """An ``EmbedEngine`` (see :mod:`pipeline`) that runs on a Ray cluster.

    ``address``: None starts (or joins, through ``RAY_ADDRESS``) Ray the way ``ray.init()`` does;
    ``"auto"`` joins the cluster started on this machine with ``ray start``; ``ray://HOST:PORT``
    connects through Ray Client. ``gpus_per_worker``: GPUs each model actor reserves (fractions
    share a GPU); ``cpus_per_worker``: its CPUs, which are also its decoding threads. ``workers``:
    most actors at once (default: as many as the cluster's resources hold).
    """

    def __init__(self, embedder_factory: Callable[[], ImageEmbedder], address: str | None = None,
                 gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0, workers: int | None = None,
                 files_per_task: int | None = None):
        if gpus_per_worker < 0 or cpus_per_worker <= 0 or (workers is not None and workers < 1):
            raise ClusterError("GPUs per worker must be ≥ 0, CPUs per worker > 0 and workers ≥ 1.")
        _host_port(address)  # a malformed address is refused before any work
        self.embedder_factory = embedder_factory
        self.address = address
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_worker = cpus_per_worker
        self.workers = workers
        self.files_per_task = files_per_task

    # ------------------------------------------------------------------ cluster
    def _connect(self, ray) -> bool:
        """Join or start Ray; True when this call did (so the job disconnects at its end)."""
        _check_reachable(self.address or os.environ.get("RAY_ADDRESS"))
        if ray.is_initialized():
            return False
        if self.address and self.address.startswith("ray://"):
            options = {}  # Ray Client takes few of ray.init's options
        else:
            options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        try:
            ray.init(address=self.address, **options)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = self.address or os.environ.get("RAY_ADDRESS") or "this machine"
            raise ClusterError(f"Cannot start or reach a Ray cluster at {where}: "
                               f"{str(e).splitlines()[0][:300]}") from None
        return True

    def _pool_size(self, ray) -> int:
        if self.workers is not None:
            return self.workers
        total = ray.cluster_resources()
        n = int(total.get("CPU", 1) // self.cpus_per_worker)
        if self.gpus_per_worker > 0:
            if not total.get("GPU"):
                raise ClusterError(f"--gpus-per-worker {self.gpus_per_worker:g}: the cluster has no GPU.")
            n = min(n, int(total["GPU"] // self.gpus_per_worker))
        return max(1, n)

    # ------------------------------------------------------------------ the engine
    def __call__(self, files: list[ScannedFile], batch_size: int) -> Iterator[list[Embedded]]:
        if not files:
            return
        ray = _ray()
        started = self._connect(ray)
        try:
            yield from self._run(ray, files, batch_size)
        finally:
            if started:
                ray.shutdown()  # a job's actors go with its driver

    def _run(self, ray, files: list[ScannedFile], batch_size: int) -> Iterator[list[Embedded]]:
        import pyarrow as pa

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # progress is the pipeline's (done/total, rate, ETA)
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled"
        step = self.files_per_task or BATCHES_PER_TASK * batch_size
        tables = [pa.table({
            "i": pa.array(range(k, min(k + step, len(files))), pa.int64()),
            "path": pa.array([os.fsencode(f.path) for f in files[k:k + step]], pa.binary()),
            "mtime_ns": pa.array([str(f.mtime_ns) for f in files[k:k + step]], pa.string()),
        }) for k in range(0, len(files), step)]
        threads = max(1, int(self.cpus_per_worker))
        ds = ray.data.from_arrow(tables).map_batches(
            _EmbedWorker, batch_size=step, batch_format="numpy",
            fn_constructor_args=(self.embedder_factory, batch_size, threads),
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=self._pool_size(ray),
                                               max_concurrent_calls_per_actor=2, enable_true_multi_threading=True),
            num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker or None)
        seen = np.zeros(len(files), bool)
        # Each task's answer as it is (never merged with another worker's), committed in batches.
        batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
        try:
            while True:
                try:
                    cols = next(batches)
                except StopIteration:
                    break
                except Exception as e:  # noqa: BLE001 - whatever broke on the cluster, one message
                    raise ClusterError(f"The Ray job failed: {_first_line(e)}") from None
                broken = next((b for b in cols["broken"] if b), None)
                if broken:
                    raise ClusterError(f"A Ray worker cannot load the model: {broken}")
                out = []
                for k, i in enumerate(cols["i"].tolist()):
                    if not 0 <= i < len(files) or seen[i]:
                        continue  # a retried task's second answer: committed once
                    seen[i] = True
                    if not cols["ok"][k]:
                        out.append(Embedded(files[i], failure=str(cols["failure"][k])))
                    else:
                        taken = float(cols["taken"][k])
                        out.append(Embedded(files[i], cols["vector"][k], dict(
                            hash=str(cols["hash"][k]), width=int(cols["width"][k]), height=int(cols["height"][k]),
                            taken=None if np.isnan(taken) else taken)))
                for k in range(0, len(out), batch_size):
                    yield out[k:k + batch_size]
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        if not seen.all():
            raise ClusterError(f"The Ray job returned {int(seen.sum())} of {len(files)} files; "
                               "run the same command again to index the rest.")


def _host_port(address: str | None) -> tuple[str, int] | None:
    """``(host, port)`` of an explicit address; None for Ray's own rules (no address, "auto")."""
    if not address or address in ("auto", "local"):
        return None
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"Ray address {address!r} is not auto, HOST:PORT or ray://HOST:PORT.")
    return host.strip("[]"), int(port)


def _check_reachable(address: str | None, timeout: float = CONNECT_SECONDS) -> None:
    """Refuse, within seconds, a HOST:PORT where nothing listens (Ray itself retries for minutes)."""
    host_port = _host_port(address)
    if host_port is None:
        return
    host, port = host_port
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(f"No Ray cluster answers at {address} ({e.strerror or e}). Start one with "
                           "'ray start --head' (see README, Beyond one machine), or check the address.") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # Ray's own messages put the user-facing cause last ("...Error: reason").
    return (lines[-1] if lines else type(e).__name__)[:300]
