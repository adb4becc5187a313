"""The optimizer's EMA of the weights, step by step."""

import keras
import numpy as np
import pytest

import architectures

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


@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
@pytest.mark.parametrize(
    "arch, input_shape",
    [
        ("resnet20", (32, 32, 3)),  # conv kernels, BatchNorm gamma/beta
        ("convnext_tiny", (32, 32, 3)),  # depthwise kernels, biases, LayerNorm, LayerScale
        ("vit_b_16", (32, 32, 3)),  # class token, position embedding, attention kernels
        ("resmlp_s12", (32, 32, 3)),  # Affine alpha/beta
    ],
)
def test_weight_decay_shrinks_kernels_and_leaves_every_other_variable_untouched(arch, input_shape, optimizer_name):
    model = architectures.build(arch, num_classes=10, input_shape=input_shape)
    variables = model.trainable_variables
    before = [variable.numpy().copy() for variable in variables]
    optimizer = make_optimizer(
        TrainConfig(optimizer=optimizer_name, weight_decay=0.1, learning_rate=0.1, warmup_epochs=0.0, epochs=1),
        steps_per_epoch=10,
    )
    optimizer.build(variables)
    optimizer.apply_gradients([(np.zeros(variable.shape, "float32"), variable) for variable in variables])
    decayed, untouched = [], []
    for variable, old in zip(variables, before):
        new = variable.numpy()
        if variable.name.endswith("kernel"):
            np.testing.assert_allclose(new, old * (1 - 0.1 * 0.1), rtol=1e-5, atol=1e-12, err_msg=variable.path)
            decayed.append(variable.path)
        else:
            np.testing.assert_array_equal(new, old, err_msg=variable.path)
            untouched.append(variable.path)
    assert decayed and untouched
    assert any(name.endswith(("gamma", "beta", "bias", "class_token", "pos_embedding", "alpha")) for name in untouched)
