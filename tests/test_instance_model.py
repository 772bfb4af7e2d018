"""The own instance model: a tiny recipe trains, exports int8 TFLite, and runs through the Segmenter."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tensorflow_model_optimization")

from converters import instance_train  # noqa: E402
from converters.instance_model import InstanceArch, InstanceLoss, build_instance_model, decode_outputs  # noqa: E402
from edge_seg import Segmenter  # noqa: E402
from edge_seg.demo import scenes  # noqa: E402


@pytest.fixture(scope="module")
def quick_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("instance_quick")
    summary = instance_train.build(root / "out", root / "work", instance_train.QUICK, verbose=False)
    return root / "out", summary


def test_targets_mark_every_visible_instance():
    arch = InstanceArch(size=64, num_masks=8)
    scene = scenes.render_touching_scene(3, (96, 96))
    t = instance_train.scene_targets(scene, arch)
    n = len(scenes.instance_annotations(scene))
    assert t["image"].shape == (64, 64, 3) and t["masks"].shape == (instance_train.MAX_INSTANCES, 32 * 32)
    owners = set(t["pos_inst"][t["pos_valid"] > 0].tolist())
    assert owners == set(range(min(n, instance_train.MAX_INSTANCES)))
    assert (t["cls"] >= 0).sum() == int(t["pos_valid"].sum())


def test_loss_is_finite_and_outputs_have_yolo_seg_layout():
    import tensorflow as tf

    arch = InstanceArch(size=64, num_masks=8, width=0.5)
    model = build_instance_model(arch)
    t = instance_train.scene_targets(scenes.render_touching_scene(1, (64, 64)), arch)
    batch = {k: tf.constant(v[None]) for k, v in t.items()}
    outputs = model(tf.cast(batch["image"], tf.float32) / 255.0, training=False)
    total, parts = InstanceLoss(arch)(outputs, batch)
    assert np.isfinite(float(total)) and set(parts) == {"cls", "box", "mask"}
    det, protos = decode_outputs(outputs, arch)
    assert det.shape == (1, 4 + 3 + 8, 64) and protos.shape == (1, 32, 32, 8)


def test_quick_recipe_exports_an_int8_model_the_segmenter_reads(quick_model):
    out, summary = quick_model
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "instance" and manifest["output"]["kind"] == "yolo_seg"
    assert manifest["classes"] == ["disc", "box", "triangle"] and len(manifest["output"]["tensors"]) == 2
    assert manifest["input"]["dtype"] == "uint8"
    assert "int8_mask_ap50" in manifest["metrics"] and summary["int8_bytes"] < 2 * 1024 * 1024
    frame = scenes.render_touching_scene(5, (96, 80)).image
    with Segmenter.create(model=out) as seg:
        assert seg.manifest.task == "instance"
        layout = seg._instance.layout
        assert (layout.num_classes, layout.num_masks, layout.num_candidates) == (3, 8, 64)
        result = seg.segment(frame)
    assert result.instances is not None
    for inst in result.instances:
        assert 0 <= inst.class_id < 3 and 0.0 <= inst.score <= 1.0
        x, y, w, h = inst.bbox
        assert 0 <= x <= 96 and 0 <= y <= 80 and w >= 0 and h >= 0
        assert inst.frame_mask((96, 80)).shape == (80, 96)
    assert result.class_map.shape == (80, 96)


def test_int8_model_has_int8_convolutions_and_float_outputs(quick_model):
    from ai_edge_litert.interpreter import Interpreter

    out, _ = quick_model
    interp = Interpreter(model_path=str(out / instance_train.INT8_NAME))
    interp.allocate_tensors()
    assert interp.get_input_details()[0]["dtype"] == np.uint8
    assert all(d["dtype"] == np.float32 for d in interp.get_output_details())
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    convs = [op for op in interp._get_ops_details() if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert convs and all(tensors[op["outputs"][0]]["dtype"] == np.int8 for op in convs)


def test_bundled_instance_model_scores_its_recorded_ap(tmp_path):
    """The bundled model on the 200 held-out touching-object frames scores what its manifest records."""
    from edge_seg.evaluate.instances import write_instance_dataset

    bundled = instance_train.BUNDLED
    if not (bundled / "manifest.json").is_file():
        pytest.skip("no bundled instance model")
    recorded = json.loads((bundled / "manifest.json").read_text())["metrics"]
    recipe = instance_train.Recipe()
    data = write_instance_dataset(tmp_path, int(recorded["heldout_frames"]), seed=instance_train.HELDOUT_SEED,
                                  size=(recipe.render, recipe.render),
                                  render=lambda s, sz: scenes.render_touching_scene(s, sz))
    result = instance_train.evaluate(bundled, data)
    assert result["ap50"] == pytest.approx(recorded["int8_mask_ap50"], abs=0.01)
    assert abs(recorded["int8_mask_ap"] - recorded["float_mask_ap"]) <= 0.02
