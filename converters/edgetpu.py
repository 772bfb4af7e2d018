"""EdgeTPU: lint an int8 ``.tflite`` against the Edge TPU compiler's rules, and compile it when possible.

The rules (Coral compiler documentation): only fully 8-bit quantised models; constant tensor
shapes; activation tensors of at most 3 dimensions, or only the innermost 3 dimensions larger than 1; only
the supported operations (``SUPPORTED_OPS``). The compiler partitions the graph once: the
first operation it cannot map **and every operation after it** run on the CPU. ``lint`` reports
every breaking op or tensor by op index and name, the ops that would fall back, and the share of
ops that would run on the TPU. It reads the model with LiteRT's interpreter (no TensorFlow).

``compile_model`` runs ``edgetpu_compiler`` when it is on ``PATH`` (the compiler exists only for
x86-64 Linux) and folds its log into the report; without it, one clear message says so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edge_seg.errors import InputError, ModelError

SUPPORTED_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS",
    "FULLY_CONNECTED", "HARD_SWISH", "L2_NORMALIZATION", "LOGISTIC", "MAXIMUM", "MAX_POOL_2D", "MEAN",
    "MINIMUM", "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6",
    "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX",
    "SPACE_TO_DEPTH", "SPLIT", "SQUARED_DIFFERENCE", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "TANH",
    "TRANSPOSE_CONV", "UNIDIRECTIONAL_SEQUENCE_LSTM",
})
# supported, but the compiler may still leave them on the CPU (size/precision dependent)
CAUTION_OPS = {
    "RESIZE_BILINEAR": "may stay on the CPU for some input/output sizes (the compiler checks the precision loss)",
    "MEAN": "no reduction over the batch dimension; a channel reduction needs channels % 4 == 0",
    "RESHAPE": "large reshapes may not be mapped",
}
_INT_TYPES = (np.int8, np.uint8)
COMPILER = "edgetpu_compiler"


@dataclass(frozen=True)
class Finding:
    """One broken rule: at op ``index`` (-1 for the model as a whole), ``rule`` and a one-line ``message``."""

    index: int
    op: str
    rule: str  # unsupported_op | non_int8 | dynamic_shape | rank | caution
    message: str


@dataclass
class LintReport:
    """What the linter found; ``ops_on_tpu`` assumes the compiler's single partition."""

    model: str
    num_ops: int
    ops: list[str]
    errors: list[Finding] = field(default_factory=list)
    cautions: list[Finding] = field(default_factory=list)
    first_cpu_op: int | None = None  # index of the first op that cannot run on the TPU
    compiler: dict | None = None

    @property
    def ops_on_tpu(self) -> int:
        return self.num_ops if self.first_cpu_op is None else self.first_cpu_op

    @property
    def tpu_share(self) -> float:
        return self.ops_on_tpu / self.num_ops if self.num_ops else 0.0

    @property
    def clean(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(ops_on_tpu=self.ops_on_tpu, tpu_share=round(self.tpu_share, 4), clean=self.clean)
        return d

    def lines(self) -> list[str]:
        """A human-readable report."""
        head = (f"{self.model}: {self.ops_on_tpu}/{self.num_ops} ops would run on the Edge TPU "
                f"({self.tpu_share:.0%})")
        out = [head + (": clean" if self.clean else f": {len(self.errors)} problem(s)")]
        for f in self.errors:
            out.append(f"  op {f.index} {f.op}: {f.message}")
        if self.first_cpu_op is not None:
            tail = self.ops[self.first_cpu_op:]
            out.append(f"  op {self.first_cpu_op} ({self.ops[self.first_cpu_op]}) and the {len(tail) - 1} op(s) "
                       "after it fall back to the CPU")
        for f in self.cautions:
            out.append(f"  note: op {f.index} {f.op}: {f.message}")
        if self.compiler:
            out.append(f"  edgetpu_compiler: {self.compiler.get('summary', self.compiler.get('message', ''))}")
        return out

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2) + "\n"


def _interpreter(path: Path):
    from edge_seg.backends.litert import interpreter_module

    try:
        interp = interpreter_module().Interpreter(model_path=str(path))
    except (ValueError, RuntimeError) as err:
        raise ModelError(f"cannot read {path.name}: {str(err).strip().splitlines()[0] if str(err).strip() else err}") \
            from None
    return interp


def _tensor_findings(index: int, op: str, tensor: dict, constant: bool) -> list[Finding]:
    found = []
    dtype = np.dtype(tensor["dtype"])
    name = tensor["name"]
    if dtype not in _INT_TYPES and not (constant and dtype == np.int32):
        found.append(Finding(index, op, "non_int8", f"tensor '{name}' is {dtype.name}, not int8/uint8"))
    signature = tensor.get("shape_signature")
    if signature is not None and len(signature) and (np.asarray(signature) < 0).any():
        found.append(Finding(index, op, "dynamic_shape",
                             f"tensor '{name}' has a dynamic shape {list(map(int, signature))}"))
    shape = [int(d) for d in tensor["shape"]]
    if not constant and len(shape) > 3 and any(d > 1 for d in shape[:-3]):  # weights are 4-D by nature
        found.append(Finding(index, op, "rank", f"tensor '{name}' {shape} has more than 3 dimensions larger than 1"))
    return found


def lint(model: str | Path) -> LintReport:
    """Check an int8 ``.tflite`` against the Edge TPU rules (see the module docstring)."""
    path = Path(model)
    if not path.is_file():
        raise InputError(f"model not found: {path}")
    interp = _interpreter(path)
    ops = sorted(interp._get_ops_details(), key=lambda o: o["index"])
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    produced = {int(t) for op in ops for t in op["outputs"]}
    inputs = {d["index"] for d in interp.get_input_details()}
    report = LintReport(model=path.name, num_ops=len(ops), ops=[o["op_name"] for o in ops])
    seen: set[tuple[int, str]] = set()
    for op in ops:
        index, name = int(op["index"]), op["op_name"]
        found = []
        if name not in SUPPORTED_OPS:
            found.append(Finding(index, name, "unsupported_op", "operation not supported by the Edge TPU"))
        for t in [*op["inputs"], *op["outputs"]]:
            t = int(t)
            if t < 0 or t not in tensors:
                continue
            constant = t not in produced and t not in inputs
            for f in _tensor_findings(index, name, tensors[t], constant):
                if (t, f.rule) not in seen:
                    seen.add((t, f.rule))
                    found.append(f)
        if found and report.first_cpu_op is None:
            report.first_cpu_op = index
        report.errors.extend(found)
        if name in CAUTION_OPS and not found:
            report.cautions.append(Finding(index, name, "caution", CAUTION_OPS[name]))
    return report


_COUNT = re.compile(r"Number of operations that will run on (Edge TPU|CPU):\s*(\d+)")


def parse_compiler_log(text: str) -> dict:
    """Op counts and per-op status lines from ``edgetpu_compiler -s`` output."""
    counts = {m.group(1): int(m.group(2)) for m in _COUNT.finditer(text)}
    rows = []
    for line in text.splitlines():
        parts = re.split(r"\s{2,}", line.strip())
        if len(parts) >= 3 and parts[1].isdigit() and parts[0].isupper():
            rows.append({"op": parts[0], "count": int(parts[1]), "status": parts[2]})
    tpu, cpu = counts.get("Edge TPU"), counts.get("CPU")
    summary = f"{tpu} op(s) on the Edge TPU, {cpu} on the CPU" if tpu is not None else "no op counts in the log"
    return {"tpu_ops": tpu, "cpu_ops": cpu, "ops": rows, "summary": summary}


def compiler_available() -> str | None:
    """The path of ``edgetpu_compiler``, or None."""
    return shutil.which(COMPILER)


def compile_model(model: str | Path, out_dir: str | Path | None = None, timeout: float = 600.0) -> dict:
    """Run ``edgetpu_compiler`` on ``model``; returns the parsed log plus ``output`` (the ``_edgetpu.tflite``).

    Without the compiler on ``PATH`` returns ``{"available": False, "message": ...}`` (one line).
    """
    exe = compiler_available()
    if exe is None:
        return {"available": False,
                "message": f"{COMPILER} not found on PATH: it exists only for x86-64 Linux (Debian package "
                           "edgetpu-compiler from the Coral apt repository); the lint above is what can be checked "
                           "without it"}
    path = Path(model)
    out = Path(out_dir or path.parent)
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([exe, "-s", "-o", str(out), str(path)], capture_output=True, text=True, timeout=timeout,
                          check=False)
    log = proc.stdout + proc.stderr
    (out / f"{path.stem}_edgetpu.log").write_text(log)
    result = {"available": True, "returncode": proc.returncode, **parse_compiler_log(log)}
    compiled = out / f"{path.stem}_edgetpu.tflite"
    if proc.returncode != 0 or not compiled.is_file():
        last = log.strip().splitlines()[-1] if log.strip() else ""
        result["message"] = f"{COMPILER} failed (exit {proc.returncode}): {last}"
    else:
        result["output"] = str(compiled)
    return result


def convert(model: str | Path, out_dir: str | Path | None = None, compile_: bool = True) -> LintReport:
    """Lint ``model`` and, if asked and the compiler is present, compile it; writes ``edgetpu_report.json``.

    When a compiled ``_edgetpu.tflite`` is written and a ``manifest.json`` beside ``model`` lists
    ``model``, the manifest gains an ``edgetpu`` entry with its sha256.
    """
    report = lint(model)
    out = Path(out_dir or Path(model).parent)
    out.mkdir(parents=True, exist_ok=True)
    if compile_:
        report.compiler = compile_model(model, out)
        compiled = report.compiler.get("output")
        if compiled:
            _add_to_manifest(Path(model), Path(compiled))
    (out / "edgetpu_report.json").write_text(report.to_json())
    return report


def _add_to_manifest(model: Path, compiled: Path) -> None:
    from edge_seg.manifest import MANIFEST_NAME, FileEntry, read_manifest, sha256_file

    manifest_path = model.parent / MANIFEST_NAME
    if not manifest_path.is_file() or compiled.parent != model.parent:
        return
    manifest = read_manifest(manifest_path)
    if not any(Path(e.path).name == model.name for e in manifest.files.values()):
        return
    manifest.files["edgetpu"] = FileEntry(path=compiled.name, sha256=sha256_file(compiled))
    manifest_path.write_text(manifest.dump())
