"""The seed's Keras pipeline, timed on the CPU: what cardiomegaly is compared against.

InceptionV3 (random weights: speed does not depend on them) at 256 px, cut at ``mixed7``, then
Flatten -> Dense(1024, relu) -> Dropout(0.2) -> Dense(1, sigmoid), the base frozen, Adam: the
transfer-learning stage of the seed's notebook. Prints one JSON object of images/s lists (5
repetitions after 2 warm-up runs each). ``bench.py`` runs this twice, with TensorFlow's oneDNN
switched off (its default on AMD CPUs) and on, since the variable must be set before import.

    TF_ENABLE_ONEDNN_OPTS=1 python benchmarks/keras_seed.py
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

SIZE = 256
REPS = 5


def seed_model() -> tf.keras.Model:
    base = tf.keras.applications.InceptionV3(
        weights=None, include_top=False, input_shape=(SIZE, SIZE, 3)
    )
    base.trainable = False
    x = tf.keras.layers.Flatten()(base.get_layer("mixed7").output)
    x = tf.keras.layers.Dense(1024, activation="relu")(x)
    x = tf.keras.layers.Dropout(0.2)(x)
    out = tf.keras.layers.Dense(1, activation="sigmoid")(x)
    model = tf.keras.Model(base.input, out)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-4), loss="binary_crossentropy")
    return model


def rates(step, images: int, calls: int) -> list[float]:
    for _ in range(2):
        step()
    out = []
    for _ in range(REPS):
        start = time.perf_counter()
        for _ in range(calls):
            step()
        out.append(images * calls / (time.perf_counter() - start))
    return out


def main() -> None:
    threads = len(os.sched_getaffinity(0))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    model = seed_model()
    rng = np.random.default_rng(0)
    x = rng.random((16, SIZE, SIZE, 3), dtype=np.float32)
    y = (np.arange(16) % 2).astype(np.float32)[:, None]
    infer = tf.function(lambda batch: model(batch, training=False))
    result = {
        "tensorflow": tf.__version__,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset"),
        "parameters": int(model.count_params()),
        "inference_16": rates(lambda: infer(x).numpy(), 16, 1),
        "train_1": rates(lambda: model.train_on_batch(x[:1], y[:1]), 1, 8),
        "train_16": rates(lambda: model.train_on_batch(x, y), 16, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
