"""Config precedence, strict keys, type checks and cross-field validation."""

import dataclasses
from pathlib import Path

import pytest

from architectures.errors import UserError
from pipeline.config import RunConfig, from_yaml_file, load_config, to_yaml, use_small_input, validate

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_yaml(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_are_the_fashion_mnist_recipe():
    config = load_config()
    assert (config.data.dataset, config.model.arch) == ("fashion_mnist", "airbench94_w16")
    validate(config)
    assert str(config.run_dir) == "runs/fashion_mnist-airbench94_w16"


def test_precedence_defaults_yaml_flags_then_set(tmp_path):
    recipe = write_yaml(tmp_path, "train:\n  epochs: 3\n  batch_size: 64\nmodel:\n  arch: resnet56\n")
    config = load_config(recipe, {"train.epochs": 4, "model.arch": None}, ["train.epochs=5", "train.learning_rate=0.02"])
    assert config.train.epochs == 5  # --set beats the flag, which beats YAML
    assert config.train.batch_size == 64  # from YAML
    assert config.model.arch == "resnet56"  # a flag left unset does not override YAML
    assert config.train.learning_rate == 0.02


def test_unknown_key_names_the_nearest_one(tmp_path):
    with pytest.raises(UserError, match=r"unknown config key 'train.epoch'; did you mean 'epochs'"):
        load_config(assignments=["train.epoch=3"])
    with pytest.raises(UserError, match=r"unknown config key 'trian'"):
        load_config(write_yaml(tmp_path, "trian:\n  epochs: 3\n"))


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("train.epochs=three", "train.epochs' expects an integer"),
        ("train.epochs=2.5", "train.epochs' expects an integer"),
        ("data.shuffle_buffer=lots", "data.shuffle_buffer' expects an integer"),
        ("train.learning_rate=fast", "train.learning_rate' expects a number"),
        ("model.options=[1, 2]", "model.options' expects a mapping"),
        ("train=5", "config section 'train' must be a mapping"),
        ("epochs", "--set expects key=value"),
    ],
)
def test_bad_values_are_one_line_user_errors(assignment, message):
    with pytest.raises(UserError, match=message) as raised:
        load_config(assignments=[assignment])
    assert "\n" not in str(raised.value)


def test_nullable_fields_accept_none():
    config = load_config(assignments=["train.gradient_clip_norm=none", "train.ema_decay=0.999"])
    assert config.train.gradient_clip_norm is None and config.train.ema_decay == 0.999


def test_family_options_pass_through_as_a_mapping():
    config = load_config(assignments=["model.arch=resnet18", "model.options={output_stride: 16}"])
    assert config.model.options == {"output_stride": 16}
    validate(config)


@pytest.mark.parametrize(
    "assignments, message",
    [
        (["model.arch=resnet5"], "unknown architecture 'resnet5'"),
        (["model.arch=resnet18", "model.options={depth: 3}"], "resnet18 has no option 'depth'"),
        (["model.arch=wrn_16_4", "model.options={dropout: 1.5}"], r"wrn_16_4 option dropout must be a number in \[0, 1\)"),
        (["model.arch=resnet18", "data.image_size=16", "model.small_input=false"], "input side 16 is too small for resnet18"),
        (["train.epochs=0"], "train.epochs must be >= 1"),
        (["train.optimizer=rmsprop"], "train.optimizer must be one of sgd, adamw"),
        (["train.precision=int8"], "train.precision must be one of"),
        (["train.warmup_epochs=9", "train.epochs=8"], "train.warmup_epochs must be in"),
        (["distribute.strategy=tpu"], "distribute.strategy must be one of"),
        (["data.dataset=imagenet"], "data.dataset must be fashion_mnist, mnist, tfds:NAME"),
        (["data.validation_fraction=1.5"], "data.validation_fraction must be in"),
        (["augment.random_erasing=2"], "augment.random_erasing must be in"),
    ],
)
def test_validate_rejects_impossible_configs(assignments, message):
    with pytest.raises(UserError, match=message):
        validate(load_config(assignments=assignments))


def test_an_existing_directory_is_accepted_as_an_image_folder_and_names_the_run(tmp_path):
    photos = tmp_path / "my photos"
    photos.mkdir()
    config = load_config(assignments=[f"data.dataset={photos}"])
    validate(config)
    assert config.run_dir.name == "my_photos-airbench94_w16"
    assert load_config(assignments=[f"data.dataset=folder:{photos}"]).run_dir.name == "folder-my_photos-airbench94_w16"


@pytest.mark.parametrize(
    "dataset, message",
    [
        ("/no/such/photos", "data.dataset must be fashion_mnist, mnist, tfds:NAME, folder:PATH, idx:DIR or the path "
                            "of an existing directory (an image folder); got '/no/such/photos'"),
        ("folder:/no/such/photos", "data.dataset: image folder not found: /no/such/photos"),
        ("idx:/no/such/files", "data.dataset: IDX directory not found: /no/such/files"),
    ],
)  # fmt: skip
def test_missing_directories_are_one_line_user_errors(dataset, message):
    with pytest.raises(UserError) as raised:
        validate(load_config(assignments=[f"data.dataset={dataset}"]))
    assert str(raised.value) == message


def test_small_input_is_automatic_below_the_family_minimum():
    config = load_config(assignments=["model.arch=resnet18"])
    assert use_small_input(config.model, 28) is True
    assert use_small_input(config.model, 64) is False
    forced = load_config(assignments=["model.arch=resnet18", "model.small_input=false"])
    assert use_small_input(forced.model, 28) is False


def test_saved_yaml_round_trips(tmp_path):
    config = load_config(assignments=["train.epochs=3", "model.options={output_stride: 16}", "model.arch=resnet50"])
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(config))
    assert from_yaml_file(path) == config
    assert from_yaml_file(path) != RunConfig()


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO_ROOT / "configs").glob("*.yaml")))
def test_every_shipped_recipe_loads_and_validates(recipe):
    config = load_config(str(REPO_ROOT / "configs" / recipe))
    if config.data.dataset.startswith("folder:"):  # the user's photos (finetune_folder.yaml): a path on their machine
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, dataset="fashion_mnist"))
    validate(config)


def test_default_recipe_file_equals_the_main_job():
    import run_pipeline

    config = load_config(str(REPO_ROOT / "configs" / "fashion_mnist.yaml"))
    defaults = RunConfig()
    assert config == dataclasses.replace(
        defaults, train=dataclasses.replace(defaults.train, time_budget=run_pipeline.MAIN_JOB_BUDGET)
    )
