"""tf.distribute: a 2-replica MirroredStrategy on CPU (two logical CPU devices), in a subprocess because
the logical device split must happen before TensorFlow initialises its devices. The default strategy
runs in test_converters_pipeline (its train.json records 1 replica)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorflow_model_optimization")

pytestmark = pytest.mark.slow

_SCRIPT = r"""
import os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, sys.argv[3])
from convert_helpers import write_blobs
from converters import workflow
data = write_blobs(sys.argv[1] + "/blobs", 24, size=(32, 32))
options = workflow.TrainOptions(width=32, height=32, alpha=0.25, epochs=1, batch=8, strategy=sys.argv[2], verbose=0)
workflow.train(workflow.DataSpec(path=data, val_fraction=0.25), sys.argv[1] + "/work", options)
"""


@pytest.mark.parametrize("strategy, replicas", [("mirrored", 2)])
def test_mirrored_strategy_trains_on_two_cpu_replicas(tmp_path, strategy, replicas):
    tests_dir = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(tests_dir.parent))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path), strategy, str(tests_dir)],
                          capture_output=True, text=True, timeout=600, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "work" / "train.json").read_text())
    assert info["float"]["replicas"] == replicas
    assert (tmp_path / "work" / "float.keras").is_file()


def test_multiworker_without_tf_config_is_a_clear_error(monkeypatch):
    import converters  # noqa: F401
    from converters.qat import make_strategy
    from edge_seg.errors import InputError

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(InputError, match="TF_CONFIG"):
        make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        make_strategy("multiworker")
    with pytest.raises(InputError, match="unknown strategy"):
        make_strategy("tpu")
