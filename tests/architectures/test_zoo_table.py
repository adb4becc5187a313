"""The `models` table: listed without building, measured by uninitialised builds that count
what real builds count. That zoo_sizes.py matches the builders is checked per variant in
test_registry.py::test_variant_at_default_size, which builds each one anyway."""

import keras
import pytest

import architectures
from architectures import registry, zoo_table
from architectures.flops import count_macs
from architectures.zoo_sizes import SIZES
from architectures.zoo_table import build_uninitialised, print_zoo_table


@pytest.fixture(autouse=True)
def fresh_keras_session():
    yield
    keras.backend.clear_session()


def table_rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in text.splitlines()[2:]}


def test_sizes_table_has_a_row_for_every_registered_variant_and_no_other():
    assert sorted(SIZES) == sorted(architectures.names())


def test_listing_the_zoo_builds_no_model(monkeypatch, capsys):
    def refuse_to_build(*arguments, **keywords):
        raise AssertionError("listing the zoo built a model")

    monkeypatch.setattr(registry, "build", refuse_to_build)
    monkeypatch.setattr(zoo_table, "build", refuse_to_build)
    rows = print_zoo_table()
    assert [row.name for row in rows] == architectures.names()
    printed = table_rows(capsys.readouterr().out)
    assert list(printed) == architectures.names()
    assert printed["resnet18"] == ["resnet", "11,689,512", "1.814", "224x224x3"]
    assert printed["cbam_resnet50"] == ["resnet", "28,089,624", "4.096", "224x224x3"]
    assert printed["resnet20"] == ["resnet_cifar", "334,072", "0.041", "32x32x3"]
    assert printed["wrn_16_4"] == ["wide_resnet", "3,003,320", "0.393", "32x32x3"]


def test_another_classifier_width_is_measured(capsys):
    print_zoo_table("resnet18", num_classes=10)
    parameters = 11_689_512 - 513 * 990  # 512 features x 10 classes + 10 biases, not x 1000 + 1000
    assert table_rows(capsys.readouterr().out)["resnet18"] == ["resnet", f"{parameters:,}", "1.814", "224x224x3"]


def smallest_variant_of_each_family() -> list[str]:
    return [
        min((name for name in SIZES if architectures.info(name).family == family), key=lambda name: SIZES[name])
        for family in architectures.families()
    ]


@pytest.mark.parametrize("name", smallest_variant_of_each_family())
def test_uninitialised_build_has_the_weights_and_macs_of_a_real_build(name):
    options = {"num_classes": 10, "input_shape": (32, 32, 3), "small_input": True}
    uninitialised = build_uninitialised(name, **options)
    real = architectures.build(name, **options)
    assert [(weight.path, tuple(weight.shape), weight.trainable) for weight in uninitialised.weights] == [
        (weight.path, tuple(weight.shape), weight.trainable) for weight in real.weights
    ]
    assert count_macs(uninitialised) == count_macs(real)
