"""The optimizer's EMA of the weights, step by step."""

import keras
import numpy as np

from pipeline.config import TrainConfig
from pipeline.train import make_optimizer


def test_ema_copies_the_first_step_then_warms_its_decay_up_as_model_garden():
    decay = 0.999
    layer = keras.layers.Dense(3, kernel_initializer="ones")
    layer.build((None, 4))
    optimizer = make_optimizer(TrainConfig(ema_decay=decay, learning_rate=0.1, warmup_epochs=0.0, epochs=1), steps_per_epoch=10)
    optimizer.build(layer.trainable_variables)
    rng = np.random.default_rng(0)
    expected = None
    for step in range(4):
        gradients = [rng.normal(size=variable.shape).astype("float32") for variable in layer.trainable_variables]
        optimizer.apply_gradients(zip(gradients, layer.trainable_variables))
        kernel = layer.kernel.numpy()
        momentum = 0.0 if step == 0 else min(decay, (1 + step) / (10 + step))  # 0, 2/11, 3/12, 4/13
        expected = kernel if expected is None else momentum * expected + (1 - momentum) * kernel
    averaged_kernel = optimizer._model_variables_moving_average[0].numpy()
    np.testing.assert_allclose(averaged_kernel, expected, rtol=1e-6)
    assert not np.allclose(averaged_kernel, kernel)  # the average trails the weights
