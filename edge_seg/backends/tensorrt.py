"""TensorRT backend and engine cache: build the engine on the device, keyed so a stale one is never used.

Engines do not move between TensorRT versions or GPU models, so the device builds its own from
the bundle's ONNX (explicit Q/DQ int8 from QAT, or float for fp16) and caches it under
``engines/``. The cache key (``EngineKey``) is the TensorRT version, GPU name, compute capability,
precision, the DLA core (if any) and the ONNX file's sha256: any change gives another file, and
engines of the same model under an older key are removed when the new one is built.

``load`` accepts the ``.onnx`` (the manifest's ``onnx`` entry; the engine is looked up or built)
or a ``.engine`` / ``.plan`` built earlier (an Ultralytics ``.engine`` starts with a length-prefixed JSON
header, which is stripped before deserialising and kept as ``metadata``). Layouts are the ONNX's
own: an NCHW PyTorch export runs as it is. Options (``BackendOptions.extra``): ``engine_dir``,
``precision`` (``fp16`` default, ``int8``, ``fp32``), ``workspace_mb`` (default 1024),
``dla_core``. Needs the TensorRT Python bindings (JetPack ships them; elsewhere ``pip install
tensorrt``) and ``cuda-python`` for device memory; both are imported only when used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_seg.backends.base import BackendOptions, LoadedSpecs
from edge_seg.errors import BackendUnavailable, ModelError
from edge_seg.manifest import sha256_file
from edge_seg.model_metadata import split_engine_header
from edge_seg.tensors import TensorSpec

if TYPE_CHECKING:
    from edge_seg.manifest import Manifest

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "int8", "fp32")
ENGINE_SUFFIX = ".engine"
META_SCALE = "edge_seg.input_scale"
META_ZERO_POINT = "edge_seg.input_zero_point"
# Jetson modules by /proc/device-tree/model substring -> CUDA compute capability
_JETSON_CC = {"Orin": "8.7", "Xavier": "7.2", "TX2": "6.2", "Nano": "5.3", "TX1": "5.3"}


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; two engines are interchangeable only when their keys are equal."""

    trt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    model_sha256: str
    dla_core: int | None = None

    def file_stem(self) -> str:
        """A file-name-safe, unique stem: readable parts plus a digest of the whole key."""
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu_name).strip("-").lower() or "gpu"
        device = f"dla{self.dla_core}" if self.dla_core is not None else f"sm{self.compute_capability.replace('.', '')}"
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.model_sha256[:12]}-{self.precision}-trt{self.trt_version}-{gpu}-{device}-{digest}"


def engine_key(trt_version: str, gpu_name: str, compute_capability: str, precision: str, model_sha256: str,
               dla_core: int | None = None) -> EngineKey:
    """The cache key; validates the precision and the sha256 (pure: no TensorRT needed)."""
    if precision not in PRECISIONS:
        raise ModelError(f"TensorRT precision '{precision}' is not one of {', '.join(PRECISIONS)}")
    if not re.fullmatch(r"[0-9a-f]{64}", model_sha256 or ""):
        raise ModelError("engine key needs the model's sha256 (64 hex digits)")
    return EngineKey(str(trt_version), str(gpu_name), str(compute_capability), precision, model_sha256, dla_core)


def engine_paths(cache_dir: Path, key: EngineKey) -> tuple[Path, Path]:
    """(engine file, its JSON sidecar) for ``key`` under ``cache_dir``."""
    stem = key.file_stem()
    return Path(cache_dir) / f"{stem}{ENGINE_SUFFIX}", Path(cache_dir) / f"{stem}.json"


def lookup(cache_dir: Path, key: EngineKey) -> Path | None:
    """The cached engine for ``key``, if its file exists and its sidecar records exactly this key."""
    engine, sidecar = engine_paths(cache_dir, key)
    if not engine.is_file() or not sidecar.is_file():
        return None
    try:
        recorded = json.loads(sidecar.read_text()).get("key")
    except (OSError, json.JSONDecodeError):
        return None
    return engine if recorded == asdict(key) else None


def stale_engines(cache_dir: Path, key: EngineKey) -> list[Path]:
    """Engines of the same model under any other key (to delete once the new one is built)."""
    current = engine_paths(cache_dir, key)[0]
    return sorted(p for p in Path(cache_dir).glob(f"{key.model_sha256[:12]}-*{ENGINE_SUFFIX}") if p != current)


def write_sidecar(cache_dir: Path, key: EngineKey, input_scale: float, input_zero_point: int) -> Path:
    sidecar = engine_paths(cache_dir, key)[1]
    sidecar.write_text(json.dumps({"key": asdict(key), "input_scale": input_scale,
                                   "input_zero_point": input_zero_point}, indent=2) + "\n")
    return sidecar


def _trt():
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable("the tensorrt backend needs the TensorRT Python bindings: on Jetson they come with "
                                 "JetPack (python3-libnvinfer); elsewhere pip install tensorrt") from None
    return tensorrt


def require() -> None:
    """Raise ``BackendUnavailable`` (one line naming the package) when TensorRT cannot be imported."""
    _trt()


def probe() -> str:
    """What this backend would run on here; raises ``BackendUnavailable`` when TensorRT is missing."""
    return f"TensorRT {_trt().__version__}"


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise BackendUnavailable("the tensorrt backend needs CUDA device memory: pip install cuda-python") from None
    return cudart


def gpu_identity() -> tuple[str, str]:
    """(GPU name, compute capability) of device 0: cuda-python, else nvidia-smi, else the Jetson model file."""
    try:
        cudart = _cudart()
        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
            return name.strip("\x00 "), f"{props.major}.{props.minor}"
    except BackendUnavailable:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.splitlines()[0]
        name, cc = (part.strip() for part in out.split(",", 1))
        return name, cc
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        pass
    model_file = Path("/proc/device-tree/model")
    if model_file.is_file():
        model = model_file.read_text(errors="replace").strip("\x00 \n")
        for part, cc in _JETSON_CC.items():
            if part in model:
                return model, cc
    raise BackendUnavailable("no NVIDIA GPU found (cuda-python, nvidia-smi and the Jetson model file all failed)")


def onnx_metadata_props(onnx_path: Path) -> dict[str, str]:
    """The ``metadata_props`` string map of an ONNX file (with ``onnx``, else onnxruntime; {} without both)."""
    try:
        import onnx

        try:
            model = onnx.load(str(onnx_path), load_external_data=False)
        except Exception as err:  # protobuf's DecodeError and friends
            raise ModelError(f"{Path(onnx_path).name} is not a readable ONNX model ({type(err).__name__})") from None
        return {p.key: p.value for p in model.metadata_props}
    except ImportError:
        try:
            import onnxruntime

            return dict(onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
                        .get_modelmeta().custom_metadata_map)
        except ImportError:
            log.warning("neither onnx nor onnxruntime is installed: the metadata of %s is unknown", onnx_path.name)
    return {}


def onnx_input_quantisation(onnx_path: Path) -> tuple[float, int]:
    """(scale, zero point) recorded in an ONNX model's metadata by ``converters.onnx`` (0.0, 0 when absent)."""
    meta = onnx_metadata_props(onnx_path)
    return float(meta.get(META_SCALE, 0.0)), int(meta.get(META_ZERO_POINT, 0))


def build_engine(onnx_path: Path, precision: str = "fp16", workspace_mb: int = 1024,
                 dla_core: int | None = None) -> bytes:
    """Build a serialized engine from an ONNX file with the TensorRT Python API (takes minutes on a Jetson)."""
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implicit in TensorRT >= 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT cannot parse {Path(onnx_path).name}: {errors}")
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if any(int(d) < 0 for d in tensor.shape):
            raise ModelError(f"input tensor '{tensor.name}' {list(tensor.shape)} of {Path(onnx_path).name} has dynamic "
                             "dims; engines here are built for one size: export it with a fixed size (Ultralytics: "
                             "dynamic=False) or use --backend onnxruntime --input-size WxH")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # the Q/DQ nodes give the scales (explicit quantisation)
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(f"TensorRT failed to build an engine from {Path(onnx_path).name} ({precision})")
    return bytes(serialized)


def default_engine_dir(model_path: Path) -> Path:
    """``engines/`` beside the model when writable, else the user's cache folder."""
    beside = Path(model_path).parent / "engines"
    if os.access(Path(model_path).parent, os.W_OK):
        return beside
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge_seg" / "engines"


def ensure_engine(onnx_path: Path, cache_dir: Path | None = None, precision: str = "fp16", workspace_mb: int = 1024,
                  dla_core: int | None = None, force: bool = False) -> tuple[Path, bool]:
    """The engine for ``onnx_path`` on this device: cached, or built now. Returns (path, built)."""
    trt = _trt()
    onnx_path = Path(onnx_path)
    cache_dir = Path(cache_dir or default_engine_dir(onnx_path))
    gpu, cc = gpu_identity()
    key = engine_key(trt.__version__, gpu, cc, precision, sha256_file(onnx_path), dla_core)
    found = None if force else lookup(cache_dir, key)
    if found is not None:
        return found, False
    log.info("building the TensorRT %s engine for %s on %s (sm %s); this can take minutes", precision,
             onnx_path.name, gpu, cc)
    data = build_engine(onnx_path, precision, workspace_mb, dla_core)
    cache_dir.mkdir(parents=True, exist_ok=True)
    engine, _ = engine_paths(cache_dir, key)
    tmp = engine.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, engine)
    write_sidecar(cache_dir, key, *onnx_input_quantisation(onnx_path))
    for old in stale_engines(cache_dir, key):
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
    return engine, True


def _check(result):
    err = result[0] if isinstance(result, tuple) else result
    if int(err) != 0:
        raise ModelError(f"CUDA call failed: {err}")
    return result[1] if isinstance(result, tuple) and len(result) > 1 else None


class TensorRTBackend(LoadedSpecs):
    """Runs a TensorRT engine (cached per device) with static shapes, batch 1."""

    name = "tensorrt"

    def __init__(self) -> None:
        self._engine = self._context = self._stream = None
        self._in: TensorSpec | None = None
        self._outs: list[TensorSpec] = []
        self._device: dict[str, int] = {}
        self._host_out: list[np.ndarray] = []
        self.engine_path: Path | None = None
        self.metadata: dict = {}  # Ultralytics metadata: the ONNX's metadata_props or the .engine's JSON header

    def load(self, path: Path, manifest: "Manifest | None" = None, options: BackendOptions | None = None) -> None:
        trt = _trt()
        cudart = _cudart()
        options = options or BackendOptions()
        path = Path(path)
        extra = options.extra
        if path.suffix == ".onnx":
            if manifest is None:  # only a model without a manifest is described by it: no onnx.load otherwise
                self.metadata = onnx_metadata_props(path)
            path, _ = ensure_engine(path, extra.get("engine_dir"), extra.get("precision", "fp16"),
                                    int(extra.get("workspace_mb", 1024)), extra.get("dla_core"))
        sidecar = path.with_suffix(".json")
        quant = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        header, serialized = split_engine_header(path.read_bytes())  # Ultralytics .engine: JSON header first
        if header is not None:
            self.metadata = header
        engine = runtime.deserialize_cuda_engine(serialized)
        if engine is None:
            raise ModelError(f"{path.name} is not an engine for this TensorRT/GPU: rebuild it "
                             "(edge-seg model build-engine --force)")
        self._engine, self._context = engine, engine.create_execution_context()
        self._stream = _check(cudart.cudaStreamCreate())
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for name in names:
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            self._device[name] = _check(cudart.cudaMalloc(int(np.prod(shape)) * dtype.itemsize))
            self._context.set_tensor_address(name, self._device[name])
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._in = TensorSpec(name, shape, dtype, float(quant.get("input_scale", 0.0)),
                                      int(quant.get("input_zero_point", 0)))
            else:
                self._outs.append(TensorSpec(name, shape, dtype))
                self._host_out.append(np.empty(shape, dtype))
        self.engine_path = path

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        cudart = _cudart()
        batch = np.ascontiguousarray(batch)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart.cudaMemcpyAsync(self._device[self._in.name], batch.ctypes.data, batch.nbytes, h2d, self._stream))
        if not self._context.execute_async_v3(self._stream):
            raise ModelError("TensorRT execution failed")
        for spec, host in zip(self._outs, self._host_out):
            _check(cudart.cudaMemcpyAsync(host.ctypes.data, self._device[spec.name], host.nbytes, d2h, self._stream))
        _check(cudart.cudaStreamSynchronize(self._stream))
        return [host.copy() for host in self._host_out]

    def close(self) -> None:
        if self._device:
            cudart = _cudart()
            for ptr in self._device.values():
                cudart.cudaFree(ptr)
            self._device = {}
        self._context = self._engine = None
