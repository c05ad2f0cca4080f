"""The FKB paper's architecture (94 -> 5 x [Dense 256, BatchNorm, LeakyReLU 0.3, Dropout] -> 65),
built in Keras with random weights and non-trivial batch-norm statistics."""

from __future__ import annotations

import numpy as np


def paper_model(dtype: str = "float32", seed: int = 0, width: int = 256, blocks: int = 5,
                n_in: int = 94, n_out: int = 65):
    import keras
    keras.utils.set_random_seed(seed)
    layers = [keras.Input(shape=(n_in,), dtype=dtype)]
    for i in range(blocks):
        layers += [
            keras.layers.Dense(width, name=f"dense_{i}", dtype=dtype),
            keras.layers.BatchNormalization(name=f"bn_{i}", dtype=dtype),
            keras.layers.LeakyReLU(negative_slope=0.3, name=f"leaky_{i}", dtype=dtype),
            keras.layers.Dropout(0.1, name=f"dropout_{i}", dtype=dtype),
        ]
    layers.append(keras.layers.Dense(n_out, name="output", dtype=dtype))
    model = keras.Sequential(layers, name="paper")
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([
                (1 + 0.2 * rng.standard_normal(gamma.shape)).astype(dtype),
                (0.1 * rng.standard_normal(beta.shape)).astype(dtype),
                (0.3 * rng.standard_normal(mean.shape)).astype(dtype),
                (0.5 + rng.uniform(0, 1.5, var.shape)).astype(dtype),
            ])
    return model
