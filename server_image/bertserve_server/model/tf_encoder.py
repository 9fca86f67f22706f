"""``TFEncoder``: the real ``Encoder`` — a BERT checkpoint on one device behind one compiled function.

Why it exists: workers need a single object that owns a model on a device and turns padded id
batches into pooled numpy vectors. Everything TensorFlow-specific (device placement, threads,
XLA, mixed precision, how weights are held) stays here, behind the narrow ``Encoder`` protocol.

How it is made fast:
- Only the layers up to the deepest ``-pooling_layer`` are built; pooling runs inside the same
  ``tf.function``, so one call does ids → pooled vectors.
- On CPU the dense kernels and LayerNorm parameters are embedded in the traced graph as
  constants: Grappler's oneDNN remapper then fuses MatMul+BiasAdd(+GELU/+residual Add), and
  oneDNN caches its pre-packed kernels across calls (about 1.5x faster than variables here).
  Embedding tables, only gathered from, stay variables. On GPU everything is a device variable.
- LayerNorm on CPU takes the fused batch-norm form oneDNN runs as one kernel (``modeling``).
- Padding is skipped: position-wise matmuls and LayerNorms run only on the positions that can
  change a result (``modeling.PaddingSkipper``), not on the padding of the batch's shorter rows.
  Not under ``-xla``, whose compiled shapes are static (there the shape buckets bound the waste).
- One traced function per size class on CPU (``SMALL_CALL_ROWS``): oneDNN blocks a dense
  kernel's weights one way for a few rows and another way for many, and TensorFlow keeps the
  blocked copy of a kernel's first call only, so one function serving both re-blocks every
  weight matrix on every call of the other class. Small calls get their own function (and a
  LayerNorm of plain ops, faster than the fused kernel for a few rows); calls with more rows get
  a second one, built after the server is ready (``prepare_large_calls``).
- ``-xla`` compiles with ``jit_compile=True``; batch and length are then rounded up to buckets so
  a stream of odd batch sizes does not trigger a compilation each.
- ``-fp16`` on a GPU computes matmuls in float16 with LayerNorm/softmax in float32. CPUs have no
  fast float16 matmul; where they multiply bfloat16 natively (AMX, AVX512-BF16) the matmuls run
  in bfloat16 instead (several times faster; about 2 significant digits fewer), else in float32.
  The output is float16 in every case, as 1.10.0's ``-fp16`` promised.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from bertserve_server.encoder import Batch, length_groups, row_extents
from bertserve_server.model import PoolingStrategy, parse_pooling_strategy
from bertserve_server.model.checkpoint import load_encoder_weights
from bertserve_server.model.config import BertConfig, resolve_pooling_layers
from bertserve_server.model.modeling import (
    EncoderSpec,
    classifier_logits,
    encode,
    param_dtype,
    prepare_weights,
)
from bertserve_server.model.pooling import output_width, pool

logger = logging.getLogger(__name__)

_configure_lock = threading.Lock()
_configured = False


def cgroup_cpu_limit(root: str | os.PathLike[str] = "/sys/fs/cgroup") -> int | None:
    """The container's CPU limit (``resources.limits.cpu``) rounded up, or None when unlimited.

    Kubernetes enforces a CPU limit as a CFS quota, not by hiding cores: a pod limited to 4 CPUs
    on a 64-core node still sees 64, and 64 TensorFlow threads would then be throttled in turn.
    Reads cgroup v2 ``cpu.max`` or v1 ``cpu/cpu.cfs_quota_us`` + ``cpu.cfs_period_us``.
    """
    base = Path(root)
    try:
        quota_text, period_text = (base / "cpu.max").read_text().split()[:2]
        if quota_text == "max":
            return None
        quota, period = int(quota_text), int(period_text)
    except (OSError, ValueError):
        try:
            quota = int((base / "cpu" / "cpu.cfs_quota_us").read_text())
            period = int((base / "cpu" / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, -(-quota // period))


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a container CPU limit."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return min(cpus, limit) if limit else cpus


def configure_runtime(
    *,
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = None,
    gpu_memory_growth: bool = True,
    gpu_memory_limit_mb: int | None = None,
) -> None:
    """Set TensorFlow's process-wide runtime options; call once, before any model is built.

    Defaults: intra-op threads = available CPUs, inter-op threads = 1 (the encoder is one chain
    of big ops; a second pool only oversubscribes the cores oneDNN already uses), GPU memory
    growth on (several workers or other processes can share a GPU), optionally a per-GPU memory
    cap (``-gpu_memory_fraction`` × card memory). Options TensorFlow no longer accepts because the
    runtime already started are logged and skipped, not fatal.
    """
    global _configured
    with _configure_lock:
        if _configured:
            return
        try:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads or available_cpus())
            tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads or 1)
        except RuntimeError as exc:
            logger.warning("thread pools already initialised, keeping them: %s", exc)
        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                if gpu_memory_limit_mb:
                    tf.config.set_logical_device_configuration(
                        gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=gpu_memory_limit_mb)]
                    )
                elif gpu_memory_growth:
                    tf.config.experimental.set_memory_growth(gpu, True)
            except (RuntimeError, ValueError) as exc:
                logger.warning("cannot configure %s, keeping defaults: %s", gpu.name, exc)
        skip_idle_graph_passes()
        _configured = True


def skip_idle_graph_passes() -> None:
    """Turn off the two Grappler passes that change nothing in the encoder's graph but cost most.

    Why: a function's first call runs Grappler over the traced graph, and with the weights
    embedded as constants every pass that copies the graph copies the weights too. Measured on
    BERT-base (2-core EPYC), the layout optimizer (NHWC/NCHW for convolutions; "0 nodes changed"
    here) and the memory optimizer (recomputation of gradients and GPU swapping; "0 nodes
    changed") took about 40 % of that first call, i.e. of the warm-up before ``/readyz``. Every
    pass that rewrites this graph (pruning, constant folding, arithmetic, remapper fusions) stays
    on, so the optimised graph, and every result, is the same. TensorFlow has a public switch for
    the first only; the second is set on the eager context's ConfigProto (before the context
    initialises), and skipped with a debug line where that internal has moved.
    """
    tf.config.optimizer.set_experimental_options({"layout_optimizer": False})
    try:
        from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
        from tensorflow.python.eager import context

        ctx = context.context()
        config = config_pb2.ConfigProto()
        if ctx._config is not None:
            config.CopyFrom(ctx._config)
        config.graph_options.rewrite_options.memory_optimization = (
            rewriter_config_pb2.RewriterConfig.NO_MEM_OPT
        )
        ctx._config = config
    except (ImportError, AttributeError) as exc:  # pragma: no cover - another TensorFlow layout
        logger.debug("memory optimizer left on: %s", exc)


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the kernel (glibc ``malloc_trim``); a no-op elsewhere.

    Why: the first call of a function with the weights embedded runs Grappler over graph copies
    holding every weight, and glibc keeps the freed pages in its arenas. Measured on BERT-base
    (2-core EPYC), that is about 1.3 GB of resident memory after the warm-up and 1.6 GB after
    the large-call function's build, none of it in use; a pod's memory limit counts it all.
    """
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to hand back
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def cpu_has_bfloat16() -> bool:
    """Whether the CPU multiplies bfloat16 natively (AMX or AVX512-BF16), per ``/proc/cpuinfo``."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def list_gpu_ids() -> list[int]:
    """Ids of the GPUs TensorFlow sees, i.e. the ``N`` of the ``/GPU:N`` devices it will create."""
    return list(range(len(tf.config.list_physical_devices("GPU"))))


def _is_gpu(device: str) -> bool:
    return "GPU" in device.upper()


def _round_up(value: int, buckets: Sequence[int], step: int) -> int:
    for bucket in buckets:
        if value <= bucket:
            return bucket
    return -(-value // step) * step


#: Weights only gathered from, never multiplied: kept as variables even when the rest are constants.
EMBEDDING_TABLES = ("embeddings/word", "embeddings/token_type", "embeddings/position")

#: The most matmul rows (kept tokens) a call may have to run on the small-call function.
#: Measured with ``ONEDNN_VERBOSE=1`` (oneDNN's AVX-512 brgemm inner product, TensorFlow 2.21):
#: up to 80 rows the weights are blocked 32 columns wide (``AB16b32a``), from 81 rows 64 wide
#: (``AB16b64a``), for MiniLM and BERT-base alike. Where another CPU moves that boundary, calls
#: between the two boundaries re-block their weights as every call did with one function, and
#: no call is slower than with one (see ``benchmarks/results/profile.md``).
SMALL_CALL_ROWS = 80


def matmul_rows(input_mask: np.ndarray, *, skip_padding: bool) -> int:
    """Rows every dense matmul of a call on ``input_mask`` ``[batch, seq]`` multiplies.

    With padding skipped that is ``modeling.kept_positions``' count (masked-in positions,
    position 0 of every row, every position of an all-padding row), else ``batch * seq``.
    """
    rows, seq = (int(n) for n in input_mask.shape)
    if not skip_padding or rows * seq == 0:
        return rows * seq
    kept = input_mask != 0
    per_row = np.count_nonzero(kept, axis=1)
    per_row = np.where(per_row == 0, seq, per_row + ~kept[:, 0])
    return int(per_row.sum())


#: Shape buckets used under ``-xla`` (each distinct shape is one XLA compilation).
XLA_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
XLA_SEQ_BUCKETS = (8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512)


class TFEncoder:
    """A BERT checkpoint on one device, computing pooled embeddings for padded batches.

    Args mirror ``bert-serving-start`` flags: ``model_dir`` (config and vocab), ``tuned_model_dir``
    and ``ckpt_name`` (weights from ``(tuned_model_dir or model_dir)/ckpt_name``), ``config_name``,
    ``pooling_strategy`` (enum member, name or int), ``pooling_layer`` (Python indices, ``-1`` =
    last), ``fp16``, ``xla``, ``no_position_embeddings``; ``device`` is a TensorFlow device string
    (``"/CPU:0"``, ``"/GPU:1"``). ``weights_as_constants`` defaults to True on CPU and False on GPU;
    ``skip_padding`` defaults to on except under ``-xla`` (results are the same either way).
    ``size_classes`` (default on where weights are constants and XLA is off, i.e. on CPU) gives
    calls of more than ``SMALL_CALL_ROWS`` matmul rows a function of their own once
    ``prepare_large_calls`` has run; until then the numpy copies of the weights are kept for it.

    ``classifier`` (``-classifier``) also loads ``run_classifier.py``'s head and traces a second
    function, ``classify``: every layer, the pooler, the head; logits in float32. Encoding keeps
    its own function (built only up to the deepest pooling layer), so ``/encode`` costs the same
    with or without the head. On CPU, where weights are graph constants, the layers both
    functions use are held twice.
    """

    #: Limits of one device call; larger batches are split (see ``rows_per_call``).
    max_tokens_per_call = 16384
    max_attention_elements = 64 * 2**20
    #: Rows of very different lengths go to separate calls once a call has this many tokens
    #: (``encoder.length_groups``).
    min_tokens_per_group = 1024

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        tuned_model_dir: str | None = None,
        ckpt_name: str = "bert_model.ckpt",
        config_name: str = "bert_config.json",
        pooling_strategy: object = PoolingStrategy.REDUCE_MEAN,
        pooling_layer: Sequence[int] = (-2,),
        fp16: bool = False,
        xla: bool = False,
        device: str = "/CPU:0",
        no_position_embeddings: bool = False,
        weights_as_constants: bool | None = None,
        skip_padding: bool | None = None,
        classifier: bool = False,
        size_classes: bool | None = None,
    ) -> None:
        configure_runtime()
        self._device = device
        self._xla = bool(xla)
        self._fp16 = bool(fp16)
        self.strategy = parse_pooling_strategy(pooling_strategy)
        config_path = Path(model_dir) / config_name
        logger.info("model config: %s", config_path)
        self.config = BertConfig.from_json_file(config_path)
        if self.strategy == PoolingStrategy.CLS_POOLED:
            self.pooling_layers: list[int] = []
            num_layers = self.config.num_hidden_layers
        else:
            self.pooling_layers = resolve_pooling_layers(list(pooling_layer), self.config.num_hidden_layers)
            num_layers = max(self.pooling_layers) + 1
        self.spec = EncoderSpec(
            config=self.config,
            num_layers=num_layers,
            use_position_embeddings=not no_position_embeddings,
            with_pooler=self.strategy == PoolingStrategy.CLS_POOLED,
            fused_layer_norm=not _is_gpu(device),
            skip_padding=not self._xla if skip_padding is None else skip_padding,
        )
        loaded = load_encoder_weights(
            self.config,
            model_dir,
            ckpt_name,
            tuned_model_dir,
            num_layers=self.config.num_hidden_layers if classifier else num_layers,
            use_position_embeddings=self.spec.use_position_embeddings,
            with_pooler=self.spec.with_pooler,
            with_classifier=classifier,
        )
        self.num_labels = loaded.num_labels
        self.classifier_spec: EncoderSpec | None = None
        if classifier:
            self.classifier_spec = replace(
                self.spec,
                num_layers=self.config.num_hidden_layers,
                with_pooler=True,
                num_labels=loaded.num_labels,
                top_layer_first_token_only=True,  # the head reads only the pooled [CLS]
            )
        self.checkpoint_path = loaded.path
        on_gpu = _is_gpu(device)
        if on_gpu and not tf.config.list_physical_devices("GPU"):
            logger.warning(
                "%s requested but TensorFlow sees no GPU: its graph will run on CPU kernels", device
            )
        self._compute_dtype = tf.float32
        if self._fp16 and on_gpu:
            self._compute_dtype = tf.float16
        elif self._fp16 and cpu_has_bfloat16():
            self._compute_dtype = tf.bfloat16
            logger.info("-fp16 on CPU: bfloat16 matmuls (the CPU has AMX/AVX512-BF16), float16 output")
        elif self._fp16:
            logger.info("-fp16 on CPU without bfloat16 support: computing in float32, float16 output")
        prepared = prepare_weights(self.spec, loaded.weights)
        self._encode_keys = frozenset(prepared)
        self._classify_keys: frozenset[str] = frozenset()
        if self.classifier_spec is not None:
            for_head = prepare_weights(self.classifier_spec, loaded.weights)
            self._classify_keys = frozenset(for_head)
            prepared = {**for_head, **prepared}
        self._constants = (not on_gpu) if weights_as_constants is None else weights_as_constants
        # Size classes only pay where oneDNN caches blocked weights: constants, no XLA, on CPU.
        self._size_classes = self._constants and not on_gpu and not self._xla and size_classes is not False
        # Embedding tables are only gathered from: they stay variables in both layouts, which
        # keeps the traced graph (and Grappler's work on it) small.
        self._numpy_params: dict[str, np.ndarray] = {}
        self._variables: dict[str, tf.Variable] = {}
        with tf.device(device):
            for key, value in prepared.items():
                dtype = param_dtype(key, self._compute_dtype)
                if self._constants and not key.startswith(EMBEDDING_TABLES):
                    self._numpy_params[key] = value.astype(dtype.as_numpy_dtype, copy=False)
                else:
                    self._variables[key] = tf.Variable(
                        tf.constant(value, dtype=dtype), trainable=False, name=key.replace("/", ".")
                    )
        self._width = output_width(self.strategy, self.config.hidden_size, len(self.pooling_layers))
        self._signature = [
            tf.TensorSpec([None, None], tf.int32, name=n) for n in ("input_ids", "input_mask", "type_ids")
        ]

        def forward_classifier(input_ids: tf.Tensor, input_mask: tf.Tensor, type_ids: tf.Tensor) -> tf.Tensor:
            return self._forward_classifier(input_ids, input_mask, type_ids)

        # Trace now (one graph serves every [batch, seq] thanks to the signature). With size
        # classes this is the small-call function, which takes every call until
        # ``prepare_large_calls`` has built the other one; it normalises with plain ops.
        self._large_lock = threading.Lock()
        self._large_function: Any = None
        tracing = time.perf_counter()
        with tf.device(device):
            small_spec = replace(self.spec, fused_layer_norm=False) if self._size_classes else self.spec
            self._function = self._trace(small_spec)
            self._classify_function = None
            if self.classifier_spec is not None:
                head = tf.function(
                    forward_classifier,
                    input_signature=self._signature,
                    jit_compile=self._xla or None,
                    autograph=False,
                )
                self._classify_function = head.get_concrete_function()
        if not self._size_classes:
            # The numpy copies of the weights embedded as constants are no longer needed; with
            # size classes ``prepare_large_calls`` embeds them once more, then drops them.
            self._numpy_params.clear()
        #: Seconds spent tracing (the server reports it as the ``trace`` start-up phase).
        self.trace_seconds = time.perf_counter() - tracing
        logger.info(
            "encoder built: %d of %d layers, pooling %s %s, device %s, %s matmuls%s",
            num_layers,
            self.config.num_hidden_layers,
            self.strategy.name,
            self.pooling_layers or "(pooler)",
            device,
            self.compute_dtype,
            ", XLA" if self._xla else "",
        )
        if self.classifier_spec is not None:
            logger.info(
                "classifier built: all %d layers, pooler, %d labels",
                self.config.num_hidden_layers,
                self.num_labels,
            )

    # -- Encoder protocol ------------------------------------------------------------------------

    @property
    def dtype(self) -> str:
        return "float16" if self._fp16 else "float32"

    @property
    def compute_dtype(self) -> str:
        """What the matmuls run in: ``float32``, ``float16`` (GPU ``-fp16``) or ``bfloat16`` (CPU ``-fp16``)."""
        return str(self._compute_dtype.name)

    @property
    def hidden_size(self) -> int:
        return self._width

    @property
    def max_position_embeddings(self) -> int:
        return self.config.max_position_embeddings

    @property
    def device(self) -> str:
        return self._device

    def encode(self, batch: Batch) -> np.ndarray:
        """``[batch, D]`` (or ``[batch, seq, D]`` for NONE) as a numpy array of ``self.dtype``."""
        return self.encode_arrays(batch.input_ids, batch.input_mask, batch.type_ids)

    def encode_arrays(
        self, input_ids: np.ndarray, input_mask: np.ndarray, type_ids: np.ndarray
    ) -> np.ndarray:
        """Like ``encode`` on three int ``[batch, seq]`` arrays.

        Rows are cut to the length their result depends on and run in groups of similar length
        (``encoder.length_groups``), each group in calls of at most ``rows_per_call`` rows; the
        result comes back in the original row order and width.
        """
        return self._grouped(
            self._function,
            input_ids,
            input_mask,
            type_ids,
            width=self._width,
            dtype=self.dtype,
            per_token=self.strategy == PoolingStrategy.NONE,
        )

    def classify(self, batch: Batch) -> np.ndarray:
        """Logits ``[batch, num_labels]`` (float32) of the classifier head (``-classifier``)."""
        return self.classify_arrays(batch.input_ids, batch.input_mask, batch.type_ids)

    def classify_arrays(
        self, input_ids: np.ndarray, input_mask: np.ndarray, type_ids: np.ndarray
    ) -> np.ndarray:
        """Like ``classify`` on three int ``[batch, seq]`` arrays (grouped and split as ``encode_arrays``)."""
        if self._classify_function is None:
            raise RuntimeError("this encoder has no classifier head (built without -classifier)")
        return self._grouped(
            self._classify_function, input_ids, input_mask, type_ids, width=self.num_labels, dtype="float32"
        )

    def _grouped(
        self,
        function: Any,
        input_ids: np.ndarray,
        input_mask: np.ndarray,
        type_ids: np.ndarray,
        *,
        width: int,
        dtype: str,
        per_token: bool = False,
    ) -> np.ndarray:
        """Run ``function`` in length groups and calls; ``[rows, width]`` (or ``[rows, seq, width]``)."""
        ids = np.asarray(input_ids, dtype=np.int32)
        mask = np.asarray(input_mask, dtype=np.int32)
        types = np.asarray(type_ids, dtype=np.int32)
        if ids.ndim != 2 or ids.shape != mask.shape or ids.shape != types.shape:
            raise ValueError(
                f"expected three equal [batch, seq] arrays, got {ids.shape}, {mask.shape}, {types.shape}"
            )
        rows, seq = ids.shape
        if rows == 0:
            return np.zeros((0, seq, width) if per_token else (0, width), dtype=dtype)
        if seq > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {seq} exceeds max_position_embeddings {self.config.max_position_embeddings}"
            )
        extents = row_extents(mask)
        groups = length_groups(extents, self.min_tokens_per_group)
        if len(groups) == 1 and int(extents.max()) == seq:
            return self._run_in_calls(function, ids, mask, types, per_token)  # nothing to cut: no copies
        # Per token (NONE): cut-off positions stay 0.
        result = np.zeros((rows, seq, width) if per_token else (rows, width), dtype=dtype)
        for group in groups:
            cut = int(extents[group].max())
            part = self._run_in_calls(
                function, ids[group, :cut], mask[group, :cut], types[group, :cut], per_token
            )
            if per_token:
                result[group, :cut] = part
            else:
                result[group] = part
        return result

    def _run_in_calls(
        self, function: Any, ids: np.ndarray, mask: np.ndarray, types: np.ndarray, per_token: bool
    ) -> np.ndarray:
        rows, seq = ids.shape
        step = self.rows_per_call(seq)
        if rows <= step:
            return self._run(function, ids, mask, types, per_token)
        parts = [
            self._run(function, ids[i : i + step], mask[i : i + step], types[i : i + step], per_token)
            for i in range(0, rows, step)
        ]
        return np.concatenate(parts, axis=0)

    def rows_per_call(self, seq: int) -> int:
        """How many rows of length ``seq`` one device call takes (bigger batches are split).

        Bounds the activations of a call: at most ``max_tokens_per_call`` tokens and
        ``max_attention_elements`` attention scores (a batch of 256 × 512 tokens of BERT-base would
        otherwise need 3 GiB for one layer's scores). Rows never interact, so splitting changes no
        result; it costs nothing measurable either, since a call of 16k tokens already keeps the
        matmuls at full speed. Under ``-xla`` the step is a power of two (a shape bucket).
        """
        heads = self.config.num_attention_heads
        rows = min(self.max_tokens_per_call // seq, self.max_attention_elements // (heads * seq * seq))
        rows = max(1, rows)
        if self._xla:
            rows = 1 << (rows.bit_length() - 1)
        return rows

    def _run(
        self, function: Any, ids: np.ndarray, mask: np.ndarray, types: np.ndarray, per_token: bool
    ) -> np.ndarray:
        rows, seq = ids.shape
        large = self._large_function
        if (
            function is self._function
            and large is not None
            and matmul_rows(mask, skip_padding=self.spec.skip_padding) > SMALL_CALL_ROWS
        ):
            function = large
        if self._xla:
            ids, mask, types = self._pad_to_bucket(ids, mask, types)
        with tf.device(self._device):
            out = function(ids, mask, types)
        result: np.ndarray = out.numpy()
        if self._xla:
            result = result[:rows, :seq] if per_token else result[:rows]
        return result

    def warm_up(self, shapes: Iterable[tuple[int, int]] | None = None) -> None:
        """Run the compiled function(s) once per ``(batch, seq)`` shape, so the first request pays nothing extra.

        What a first request would otherwise pay is the first call of the function: Grappler
        optimises the traced graph (with the weights embedded, most of the cost) and the runtime
        instantiates it, once for every shape. Default: a single short sentence (no padding) and
        two rows of which one is padded (the padding-skipping path), each a few milliseconds
        after the first. Bigger batches are not warmed up: measured, a first 32 x 128 batch
        after these takes no longer than the second one (oneDNN prepares its kernels per shape
        on every new shape anyway), so warming it up only delayed readiness. Under ``-xla`` every
        shape bucket is a compilation of its own; the two calls compile the smallest buckets.
        """
        seq = min(16, self.config.max_position_embeddings)
        for rows, length in shapes or ((1, seq), (2, seq)):
            ids = np.full((rows, length), 0, np.int32)
            ids[:, 0] = 1
            mask = np.ones((rows, length), np.int32)
            mask[1:, length // 2 :] = 0  # every row after the first is half padding
            self.encode_arrays(ids, mask, np.zeros_like(ids))
            if self._classify_function is not None:
                self.classify_arrays(ids, mask, np.zeros_like(ids))
        release_free_memory()

    @property
    def size_classes(self) -> bool:
        """Whether calls of more than ``SMALL_CALL_ROWS`` matmul rows get a function of their own."""
        return self._size_classes

    @property
    def large_calls_ready(self) -> bool:
        """Whether ``prepare_large_calls`` has built the large-call function (calls now use it)."""
        return self._large_function is not None

    def prepare_large_calls(self, cancel: threading.Event | None = None) -> float:
        """Build and warm up the function for calls of more than ``SMALL_CALL_ROWS`` rows; seconds taken.

        Until this returns every call runs on the small-call function: the same results (the
        two LayerNorm forms agree within float32 rounding), but each larger call re-blocks the
        weights, 5-20 % slower. It is kept out of ``warm_up`` because it costs as much as the
        first trace and warm-up again (BERT-base: about 7 s on 2 cores), which would push
        readiness out; the server runs it in the background once it is ready. Safe to call from
        another thread while calls run. ``cancel`` (a shutdown) is checked between the trace and
        each warm-up call, so a cancelled build ends within one of them and leaves the small-call
        function in use. Returns 0 where there are no size classes, it ran, or it was cancelled.
        """

        def cancelled() -> bool:
            if cancel is not None and cancel.is_set():
                logger.info("large-call function's build cancelled (shutting down)")
                return True
            return False

        with self._large_lock:
            if not self._size_classes or self._large_function is not None or cancelled():
                return 0.0
            started = time.perf_counter()
            with tf.device(self._device):
                function = self._trace(self.spec)
                # The first call fixes every kernel's blocked weights, so it has more rows than
                # the small class; the second also runs the padding-skipping branches.
                length = min(SMALL_CALL_ROWS + 16, self.config.max_position_embeddings)
                rows = -(-(SMALL_CALL_ROWS + 1) // length) * 2
                ids = np.ones((rows, length), np.int32)
                mask = np.ones_like(ids)
                if cancelled():
                    return 0.0
                function(ids, mask, np.zeros_like(ids))
                mask[1::2, length // 2 :] = 0
                if cancelled():
                    return 0.0
                function(ids, mask, np.zeros_like(ids))
            self._numpy_params.clear()
            self._large_function = function
            seconds = time.perf_counter() - started
        release_free_memory()
        logger.info(
            "large-call function ready in %.2fs (calls of more than %d rows)", seconds, SMALL_CALL_ROWS
        )
        return seconds

    # -- internals -------------------------------------------------------------------------------

    def _pad_to_bucket(
        self, ids: np.ndarray, mask: np.ndarray, types: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows, seq = ids.shape
        target_rows = _round_up(rows, XLA_BATCH_BUCKETS, 256)
        target_seq = min(_round_up(seq, XLA_SEQ_BUCKETS, 128), self.config.max_position_embeddings)
        if (target_rows, target_seq) == (rows, seq):
            return ids, mask, types
        pad = ((0, target_rows - rows), (0, target_seq - seq))
        return np.pad(ids, pad), np.pad(mask, pad), np.pad(types, pad)

    def _params(self, keys: frozenset[str]) -> dict[str, tf.Tensor]:
        # Called while tracing: the numpy arrays become Const nodes of the traced graph (only the
        # ones this function reads).
        params: dict[str, tf.Tensor] = {k: tf.constant(v) for k, v in self._numpy_params.items() if k in keys}
        params.update({k: v for k, v in self._variables.items() if k in keys})
        return params

    def _trace(self, spec: EncoderSpec) -> Any:
        """The concrete ``tf.function`` computing ids -> pooled vectors with ``spec``."""

        def forward(input_ids: tf.Tensor, input_mask: tf.Tensor, type_ids: tf.Tensor) -> tf.Tensor:
            return self._forward(spec, input_ids, input_mask, type_ids)

        # A fresh Python function per trace: TensorFlow's retracing detector counts traces per
        # function object, and each encoder (and size class) legitimately traces its own.
        function = tf.function(
            forward, input_signature=self._signature, jit_compile=self._xla or None, autograph=False
        )
        return function.get_concrete_function()

    def _forward(
        self, spec: EncoderSpec, input_ids: tf.Tensor, input_mask: tf.Tensor, type_ids: tf.Tensor
    ) -> tf.Tensor:
        layers, pooled = encode(
            spec,
            self._params(self._encode_keys),
            input_ids,
            input_mask,
            type_ids,
            compute_dtype=self._compute_dtype,
        )
        result = pool(self.strategy, layers, self.pooling_layers, input_mask, pooled)
        return tf.cast(result, tf.float16) if self._fp16 else result

    def _forward_classifier(
        self, input_ids: tf.Tensor, input_mask: tf.Tensor, type_ids: tf.Tensor
    ) -> tf.Tensor:
        assert self.classifier_spec is not None
        params = self._params(self._classify_keys)
        _, pooled = encode(
            self.classifier_spec, params, input_ids, input_mask, type_ids, compute_dtype=self._compute_dtype
        )
        assert pooled is not None
        return classifier_logits(pooled, params)  # [batch, num_labels] float32
