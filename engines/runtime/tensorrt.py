"""TensorRT backend: FP16 engine with a batch 1..N optimisation profile, cached on disk.

TensorRT (``tensorrt``) and ``cuda-python`` are imported lazily; without them
:class:`TensorRTBackend` raises :class:`BackendUnavailable` with an install hint. The engine is
built from the ONNX file once and cached under ``cache_dir`` keyed by the model's SHA-256,
the TensorRT version, the GPU name and the profile limits. The runtime allocates its device and
pinned host buffers once (for the profile maximum) and runs everything on one CUDA stream.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engines.runtime.base import BackendUnavailable, check_io, empty_probs
from engines.spec import (
    N_MELS,
    N_VISEMES,
    ONNX_INPUT_FEATURES,
    ONNX_INPUT_STATE,
    ONNX_META_LOOKAHEAD,
    ONNX_OUTPUT_PROBS,
    ONNX_OUTPUT_STATE,
)

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install tensorrt cuda-python (the [gpu] extra) on a machine with an NVIDIA GPU"
DEFAULT_CACHE = Path(os.environ.get("AVATAR_TRT_CACHE", Path.home() / ".cache" / "avatar" / "tensorrt"))


class TensorRTBuildError(RuntimeError):
    """The ONNX parser or the engine builder failed; the message lists every parser error."""


def _import_trt() -> tuple[Any, Any]:
    """(tensorrt, cudart) modules, or BackendUnavailable with the install hint."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailable(f"TensorRT is not installed ({e}); {INSTALL_HINT}") from e
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise BackendUnavailable(f"cuda-python is not installed ({e}); {INSTALL_HINT}") from e
    return trt, cudart


def _cuda_check(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(err, *values)`` tuple, raising on a non-zero error code."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA {what} failed: {err}")
    return rest[0] if len(rest) == 1 else rest


def _read_onnx_contract(path: Path) -> tuple[int, int]:
    """(state_size, lookahead_hops) read from the ONNX file without onnxruntime."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    if ONNX_META_LOOKAHEAD not in meta:
        raise ValueError(f"{path}: metadata {ONNX_META_LOOKAHEAD!r} missing (have {sorted(meta)})")
    for inp in proto.graph.input:
        if inp.name == ONNX_INPUT_STATE:
            dims = inp.type.tensor_type.shape.dim
            if len(dims) != 2 or not dims[1].dim_value:
                raise ValueError(f"{path}: state input must be (batch, S) with a fixed S")
            return int(dims[1].dim_value), int(meta[ONNX_META_LOOKAHEAD])
    raise ValueError(f"{path}: no input named {ONNX_INPUT_STATE!r}")


def build_engine(
    onnx_path: Path, state_size: int, max_batch: int, max_time: int, fp16: bool = True
) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine with one profile for batch/time 1..max."""
    trt, _ = _import_trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTBuildError(
            f"TensorRT could not parse {onnx_path} ({len(errors)} errors):\n  " + "\n  ".join(errors)
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 256 << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    opt_b, opt_t = max(1, max_batch // 2), 2
    profile.set_shape(ONNX_INPUT_FEATURES, (1, 1, N_MELS), (opt_b, opt_t, N_MELS), (max_batch, max_time, N_MELS))
    profile.set_shape(ONNX_INPUT_STATE, (1, state_size), (opt_b, state_size), (max_batch, state_size))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTBuildError(f"TensorRT failed to build an engine for {onnx_path} (see its log above)")
    return bytes(serialized)


class TensorRTBackend:
    """:class:`engines.runtime.base.InferenceBackend` on a TensorRT engine (one CUDA stream)."""

    name = "tensorrt"

    def __init__(
        self,
        model_path: str | Path,
        max_batch: int = 64,
        max_time: int = 64,
        fp16: bool = True,
        cache_dir: str | Path = DEFAULT_CACHE,
    ) -> None:
        trt, cudart = _import_trt()
        self._trt, self._cudart = trt, cudart
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"viseme model not found: {self.model_path}")
        if max_batch < 1 or max_time < 1:
            raise ValueError(f"max_batch and max_time must be >= 1, got {max_batch}, {max_time}")
        n_dev = _cuda_check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if int(n_dev) < 1:
            raise BackendUnavailable("no CUDA device visible")
        props = _cuda_check(cudart.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
        gpu = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        self._state_size, self._lookahead = _read_onnx_contract(self.model_path)
        self.max_batch, self.max_time = max_batch, max_time
        model_hash = hashlib.sha256(self.model_path.read_bytes()).hexdigest()
        key = hashlib.sha256(
            f"{model_hash}|trt{trt.__version__}|{gpu}|b{max_batch}|t{max_time}|fp16={fp16}".encode()
        ).hexdigest()[:24]
        cache = Path(cache_dir) / f"visemes-{key}.engine"
        if cache.is_file():
            plan = cache.read_bytes()
            log.info("TensorRT engine from cache %s", cache)
        else:
            log.info("building TensorRT engine for %s on %s (TensorRT %s, fp16=%s)",
                     self.model_path, gpu, trt.__version__, fp16)
            plan = build_engine(self.model_path, self._state_size, max_batch, max_time, fp16)
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_bytes(plan)
            tmp.replace(cache)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise TensorRTBuildError(f"could not deserialize the TensorRT engine {cache}")
        self._context = self._engine.create_execution_context()
        self._stream = _cuda_check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._stream_handle = int(self._stream)  # execute_async_v3 takes the raw handle
        # Buffers for the profile maximum, allocated once: device + pinned host per IO tensor.
        shapes = {
            ONNX_INPUT_FEATURES: (max_batch, max_time, N_MELS),
            ONNX_INPUT_STATE: (max_batch, self._state_size),
            ONNX_OUTPUT_PROBS: (max_batch, max_time, N_VISEMES),
            ONNX_OUTPUT_STATE: (max_batch, self._state_size),
        }
        self._dev: dict[str, int] = {}
        self._host: dict[str, NDArray[np.float32]] = {}
        self._host_ptr: dict[str, int] = {}
        for name, shape in shapes.items():
            nbytes = int(np.prod(shape)) * 4
            self._dev[name] = int(_cuda_check(cudart.cudaMalloc(nbytes), "cudaMalloc"))
            ptr = int(_cuda_check(cudart.cudaMallocHost(nbytes), "cudaMallocHost"))
            import ctypes

            buf = (ctypes.c_float * int(np.prod(shape))).from_address(ptr)
            self._host[name] = np.ctypeslib.as_array(buf)
            self._host_ptr[name] = ptr
            self._context.set_tensor_address(name, self._dev[name])

    @property
    def state_size(self) -> int:
        """Floats of streaming state per stream."""
        return self._state_size

    @property
    def lookahead_hops(self) -> int:
        """From the model's ``lookahead_hops`` metadata."""
        return self._lookahead

    def _copy(self, name: str, n: int, to_device: bool) -> None:
        cudart = self._cudart
        kind = (cudart.cudaMemcpyKind.cudaMemcpyHostToDevice if to_device
                else cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        dst, src = (self._dev[name], self._host_ptr[name]) if to_device else (self._host_ptr[name], self._dev[name])
        _cuda_check(cudart.cudaMemcpyAsync(dst, src, n * 4, kind, self._stream), "cudaMemcpyAsync")

    def run(
        self, features: NDArray[np.float32], state: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """(B, T, 40), (B, S) -> (B, T, 15) probs, (B, S) state; B <= max_batch, T <= max_time."""
        f, s = check_io(features, state, self._state_size)
        b, t = f.shape[0], f.shape[1]
        if t == 0:
            return empty_probs(b), s.copy()
        if b > self.max_batch or t > self.max_time:
            raise ValueError(
                f"batch {b} / time {t} over the engine profile (max {self.max_batch} / {self.max_time})"
            )
        nf, ns, np_ = f.size, s.size, b * t * N_VISEMES
        self._host[ONNX_INPUT_FEATURES][:nf] = f.reshape(-1)
        self._host[ONNX_INPUT_STATE][:ns] = s.reshape(-1)
        self._copy(ONNX_INPUT_FEATURES, nf, True)
        self._copy(ONNX_INPUT_STATE, ns, True)
        self._context.set_input_shape(ONNX_INPUT_FEATURES, (b, t, N_MELS))
        self._context.set_input_shape(ONNX_INPUT_STATE, (b, self._state_size))
        if not self._context.execute_async_v3(self._stream_handle):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self._copy(ONNX_OUTPUT_PROBS, np_, False)
        self._copy(ONNX_OUTPUT_STATE, ns, False)
        _cuda_check(self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        probs = self._host[ONNX_OUTPUT_PROBS][:np_].reshape(b, t, N_VISEMES).copy()
        state_out = self._host[ONNX_OUTPUT_STATE][:ns].reshape(b, self._state_size).copy()
        return probs, state_out

    def close(self) -> None:
        """Free the device and pinned buffers and the stream (idempotent)."""
        cudart = self._cudart
        for ptr in self._dev.values():
            cudart.cudaFree(ptr)
        for ptr in self._host_ptr.values():
            cudart.cudaFreeHost(ptr)
        self._dev.clear()
        self._host_ptr.clear()
        self._host.clear()
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may already be gone
            pass
