"""Builds the example model the demo and the tests deploy: a small Keras regression on synthetic data.

y = x . w + 0.5 with w = (1.0, -2.0, 0.5, 3.0), four float inputs, exported as a SavedModel whose
`serving_default` signature takes `inputs` (float32 [None, 4]) and returns `output_0`.
Variants (for tests of the pipeline's guardrails):
  good    - trained a little            (MAE ~0.1)
  better  - trained longer              (a second version that should be promoted)
  nosig   - exported without `serving_default` (validation must reject it)
  noisy   - answers with random noise on top (passes lax validation, fails serving parity in smoke)
  fragile - `better`'s answers, but refuses inputs outside [-1, 1] (INVALID_ARGUMENT, HTTP 400): passes
            validation and smoke (the golden inputs lie inside), fails on live traffic that does not
  slow    - `better`'s answers after ~SLOW_MATMULS 256x256 matrix products per call: correct, but slow
Also writes `golden.json` (inputs and expected labels) beside the SavedModel directory. `make demo` builds into
`$TFDEPLOY_STATE_DIR/example/<variant>/` (settings.example_dir), where model_deploy's Params point by default: the
project's own directory, not a world-writable one such as /tmp.

Usage: python include/example_model/build.py --out DIR [--variant good] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

W = np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32)
B = 0.5
SLOW_MATMULS = 40


def data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, 4)).astype(np.float32)
    return x, (x @ W + B).reshape(-1, 1).astype(np.float32)


def build(out: Path, variant: str, seed: int) -> Path:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    x, y = data(2048, seed)
    model = tf.keras.Sequential([tf.keras.Input(shape=(4,), name="inputs"), tf.keras.layers.Dense(1)])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05), loss="mse")
    model.fit(x, y, epochs=40 if variant in ("better", "fragile", "slow") else 12, batch_size=128, verbose=0)
    saved = out / "saved_model"
    spec = [tf.TensorSpec([None, 4], tf.float32, name="inputs")]
    if variant in ("good", "better"):
        model.export(str(saved), format="tf_saved_model", verbose=False)
    else:
        # Keras' export archive with our own endpoints: `nosig` has no `serving_default`; `noisy` adds noise
        archive = tf.keras.export.ExportArchive()
        archive.track(model)
        if variant == "nosig":
            archive.add_endpoint(name="predict_only", fn=model.call, input_signature=spec)
        elif variant == "fragile":

            def fragile(inputs):
                check = tf.debugging.assert_less_equal(
                    tf.reduce_max(tf.abs(inputs)), 1.0, message="inputs outside the range this model was trained on"
                )
                with tf.control_dependencies([check]):
                    return model.call(inputs)

            archive.add_endpoint(name="serving_default", fn=fragile, input_signature=spec)
        elif variant == "slow":
            weights = tf.random.stateless_normal([256, 256], seed=[seed, 1]) / 16.0

            def slow(inputs):
                burn = tf.while_loop(
                    lambda i, m: i < SLOW_MATMULS, lambda i, m: (i + 1, tf.tanh(tf.matmul(m, weights))), (0, weights)
                )[1]
                return model.call(inputs) + 0.0 * tf.reduce_sum(burn)

            archive.add_endpoint(name="serving_default", fn=slow, input_signature=spec)
        else:

            def noisy(inputs):
                y = model.call(inputs)
                return y + tf.random.normal(tf.shape(y), stddev=5.0)

            archive.add_endpoint(name="serving_default", fn=noisy, input_signature=spec)
        archive.write_out(str(saved), verbose=False)
        if variant == "nosig":  # the archive names its first endpoint serving_default too: drop that alias
            from tensorflow.core.protobuf import saved_model_pb2

            pb = saved_model_pb2.SavedModel.FromString((saved / "saved_model.pb").read_bytes())
            for meta_graph in pb.meta_graphs:
                del meta_graph.signature_def["serving_default"]
            (saved / "saved_model.pb").write_bytes(pb.SerializeToString())
    gx, gy = data(64, seed + 1)
    (out / "golden.json").write_text(
        json.dumps({"signature_name": "serving_default", "inputs": gx.tolist(), "labels": gy[:, 0].tolist()})
    )
    return saved


def build_side_by_side(out: Path, variants: Mapping[str, tuple[str, int]], timeout: float = 600) -> dict[str, Path]:
    """Builds the example model once per ``{name: (variant, seed)}``, each in a process of its own and all at once,
    into ``out/<name>`` (saved_model/ and golden.json); returns each name's directory. A build that fails raises
    RuntimeError with the end of its error output (the benchmarks and the end-to-end tests build theirs so)."""
    procs = {
        name: subprocess.Popen(
            [sys.executable, __file__, "--out", str(out / name), "--variant", variant, "--seed", str(seed)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for name, (variant, seed) in variants.items()
    }
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"building the {name} example failed: {err.decode()[-2000:]}")
    return {name: out / name for name in variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--variant", default="good", choices=["good", "better", "nosig", "noisy", "fragile", "slow"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(build(args.out, args.variant, args.seed))


if __name__ == "__main__":
    main()
