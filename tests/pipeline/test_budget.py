"""Time-budgeted training (`train.time_budget`): the plan's arithmetic on given measurements, the
schedule laid over the planned steps, a plan kept across resume, and a real budgeted run.
Whether a real job ends on time is measured in the benchmarks, not here."""

import csv
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from architectures.errors import UserError
from pipeline.budget import Measurements, Plan, parse_duration, plan_training, replan_remaining
from pipeline.checkpoints import BackupManager
from pipeline.config import TrainConfig
from pipeline.data import array_split, evaluation_images
from pipeline.train import LoopState, Trainer, TrainingBudget, WarmupThenDecay, learning_rate_schedule, make_optimizer
from tests.cli import TINY_RUN, run_cli
from tests.pipeline.test_run import needs_fashion_mnist
from tests.pipeline.test_train import _constant_classifier


@pytest.mark.parametrize(
    "text, seconds", [("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400), ("45", 45), ("1.5m", 90)]
)
def test_durations_read_in_seconds_minutes_and_hours(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["ten minutes", "10x", "", "0s"])
def test_an_unreadable_or_empty_duration_is_a_user_error(text):
    with pytest.raises(UserError, match="time_budget"):
        parse_duration(text)


def _plan(budget=600.0, elapsed=20.05, per_step=0.1, per_eval_image=0.0005, steps_done=0, exporting=True):
    return plan_training(
        budget_seconds=budget,
        measured=Measurements(elapsed=elapsed, per_step=per_step, per_eval_image=per_eval_image),
        steps_done=steps_done,
        steps_per_split_epoch=468,
        validation_images=6_000,
        test_images=10_000,
        exporting=exporting,
        warmup_epochs=0.5,
    )


def test_a_measured_step_rate_gives_the_most_steps_that_end_within_the_budget():
    plan = _plan()
    # Held back: safety 5 + 3% of 600 = 23 s; the finish is 5 s + the 5 s test pass, and the
    # export's 30 s + 4 test passes (20 s) = 60 s. That leaves 600 - 23 - 20.05 - 60 = 496.95 s
    # for epochs of 46.8 s of steps and a 3 s validation: 9 whole epochs take 448 s; 10 epochs
    # leave 466.95 s for 4,669 steps, shared evenly as 10 x 466.
    assert plan.finish_seconds == pytest.approx(60.0)
    assert (plan.epochs, plan.steps_per_epoch, plan.total_steps) == (10, 466, 4660)
    assert plan.warmup_steps == 233
    assert plan.expected_end <= 600 - 23 + 1e-9
    one_more_step = plan.planned_at + (plan.total_steps + plan.epochs) * 0.1 + plan.epochs * 3.0 + plan.finish_seconds
    assert one_more_step > 600 - 23  # another step per epoch would not fit


def test_a_budget_below_one_epoch_trains_part_of_one_epoch_and_warms_up_within_it():
    # 120 - (5 + 3.6) - 20.05 - (5 + 5) = 81.35 s: 2 epochs leave 75.35 s for 753 steps, 2 x 376.
    plan = _plan(budget=120.0, exporting=False)
    assert (plan.epochs, plan.steps_per_epoch) == (2, 376)
    # 60 - 6.8 - 20.05 - 10 - 3 = 20.15 s of steps: 201 steps of one epoch, warmup half of them.
    small = _plan(budget=60.0, exporting=False)
    assert (small.epochs, small.total_steps, small.warmup_steps) == (1, 201, round(0.5 * 201))


def test_a_slower_machine_plans_fewer_steps_and_the_steps_already_taken_count():
    fast, slow = _plan(per_step=0.1), _plan(per_step=0.5)
    assert slow.total_steps < fast.total_steps / 4
    assert _plan(per_step=0.5, steps_done=30).total_steps >= slow.total_steps + 25


def test_a_budget_too_small_for_one_evaluation_names_what_it_needs():
    with pytest.raises(UserError, match=r"time_budget 60 s is too small: .* give at least \d+ s"):
        _plan(budget=60.0, elapsed=30.0, exporting=True)


def test_the_schedule_is_keras_cosine_decay_and_ends_at_zero_after_new_lengths_are_set():
    keras_cosine = keras.optimizers.schedules.CosineDecay(0.0, 90, warmup_target=0.4, warmup_steps=10)
    ours = WarmupThenDecay(0.4, total_steps=100, warmup_steps=10)
    steps = np.arange(0, 101)
    np.testing.assert_allclose([float(ours(s)) for s in steps], [float(keras_cosine(s)) for s in steps], atol=1e-7)
    linear = WarmupThenDecay(0.4, total_steps=1_000, warmup_steps=100, decay="linear")
    traced = tf.function(lambda step: linear(step))
    assert float(traced(tf.constant(50))) == pytest.approx(0.2)
    linear.set_lengths(total_steps=60, warmup_steps=10)  # a budget's plan, after tracing
    assert float(traced(tf.constant(5))) == pytest.approx(0.2)
    assert float(traced(tf.constant(35))) == pytest.approx(0.2)  # halfway down from 10 to 60
    assert float(traced(tf.constant(60))) == 0.0 and float(traced(tf.constant(70))) == 0.0


@pytest.mark.parametrize(
    "later, steps_last_epoch, total_steps, steps_run",
    [
        ({}, 2, 6, 3),  # step 2 of epoch 2, then epoch 3's 2 steps
        ({"changes": ((2, 3),)}, 3, 7, 4),  # re-planned: epoch 3 has 3 steps
    ],
)
def test_a_backup_keeps_the_plan_and_a_resumed_trainer_follows_it_without_planning_again(
    tmp_path, later, steps_last_epoch, total_steps, steps_run
):
    plan = Plan(budget_seconds=1.0, epochs=3, steps_per_epoch=2, warmup_steps=1, seconds_per_step=0.01,
                seconds_per_validation=0.01, finish_seconds=0.5, planned_at=0.2, **later)  # fmt: skip
    config = TrainConfig(epochs=9, steps_per_execution=1, learning_rate=0.01, time_budget="1s")
    model = _constant_classifier(2, favourite=0)
    optimizer = make_optimizer(config, 4)
    backups = BackupManager(tmp_path, model, optimizer, chief=True)
    backups.save(LoopState(epoch=1, step_in_epoch=1, plan=plan))
    restored = BackupManager(tmp_path, model, optimizer, chief=True).restore()
    assert restored.plan == plan and (restored.epoch, restored.step_in_epoch) == (1, 1)

    images = np.zeros((16, 4, 4, 1), np.float32)
    one_hot = np.eye(2, dtype=np.float32)[[0] * 16]
    validation = evaluation_images(array_split(np.zeros((6, 4, 4, 1), np.uint8), np.zeros(6, np.int64), None), in_memory=False)
    # A second plan on a 1 s budget would fail: a resumed run must not make one.
    budget = TrainingBudget(seconds=1.0, validation_probe=validation, validation_probe_images=6, validation_images=6,
                            test_images=6, exporting=False, chief=True)  # fmt: skip
    trainer = Trainer(
        model=model, optimizer=optimizer, strategy=tf.distribute.get_strategy(), config=config, num_classes=2,
        steps_per_epoch=4, global_batch_size=4, show_progress=False, budget=budget,
    )  # fmt: skip
    state = trainer.fit(
        state=restored,
        train_dataset_fn=lambda epoch, skip, context: tf.data.Dataset.from_tensor_slices((images, one_hot)).batch(4).skip(skip),
        validation=validation, on_backup=lambda current: None, on_epoch_end=lambda record, is_best: None,
    )  # fmt: skip
    assert (state.epoch, len(state.history), state.plan) == (3, 2, plan)
    assert (trainer.epochs, trainer.steps_per_epoch) == (3, steps_last_epoch)
    schedule = learning_rate_schedule(optimizer)
    assert (float(schedule.total_steps.numpy()), float(schedule.warmup_steps.numpy())) == (total_steps, 1.0)
    assert int(optimizer.iterations.numpy()) == steps_run


@needs_fashion_mnist
def test_a_budgeted_run_plans_its_epochs_ends_at_zero_learning_rate_and_records_the_plan(tmp_path):
    tiny = [argument for argument in TINY_RUN if argument not in ("--epochs", "2")]
    result = run_cli("train", *tiny, "--time-budget", "30s", "--output-dir", str(tmp_path), "--run-name", "budget")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "time budget 30 s: measured" in result.stderr and "planned" in result.stderr
    metrics = json.loads((tmp_path / "budget" / "metrics.json").read_text())
    plan = metrics["run"]["time_budget_plan"]
    assert metrics["run"]["epochs"] == plan["epochs"] >= 1
    assert 1 <= plan["steps_per_epoch"] <= 20  # 640 images / batch 32
    with open(tmp_path / "budget" / "history.csv") as history:
        assert float(list(csv.DictReader(history))[-1]["learning_rate"]) == 0.0
    assert "time budget: the job took" in result.stdout


def test_explicit_epochs_win_over_a_budget():
    import run_pipeline

    arguments = run_pipeline._build_parser().parse_args(["train", "--epochs", "3", "--time-budget", "10m"])
    config = run_pipeline._resolved_config(arguments)
    assert (config.train.epochs, config.train.time_budget) == (3, None)
    budgeted = run_pipeline._resolved_config(run_pipeline._build_parser().parse_args(["train", "--time-budget", "10m"]))
    assert budgeted.train.time_budget == "10m"


@needs_fashion_mnist
def test_a_hopeless_budget_is_one_line_exit_2_and_leaves_no_run_directory(tmp_path):
    tiny = [argument for argument in TINY_RUN if argument not in ("--epochs", "2")]
    hopeless = run_cli("train", *tiny, "--time-budget", "3s", "--output-dir", str(tmp_path), "--run-name", "hopeless")
    assert hopeless.returncode == 2
    assert hopeless.stderr.strip().splitlines()[-1].startswith("error: train.time_budget 3 s is too small")
    assert "Traceback" not in hopeless.stderr
    assert not (tmp_path / "hopeless").exists()


def _ends_by(plan: Plan, epochs_done: int, now: float, per_step: float) -> float:
    """Job second at which `plan`'s remaining epochs end at `per_step` and its planned validations."""
    steps = plan.total_steps - plan.steps_before(epochs_done)
    return now + steps * per_step + (plan.epochs - epochs_done) * plan.seconds_per_validation


def test_a_check_on_schedule_keeps_the_plan_within_a_step():
    plan = _plan()  # 10 epochs of 466 steps at 0.1 s and a 3 s validation: 49.6 s each
    now = plan.planned_at + 3 * 49.6
    replanned = replan_remaining(plan, epochs_done=3, seconds_per_step=0.1, now=now, split_steps=468)
    assert replanned.epochs == 10
    assert abs(replanned.steps_in_epoch(5) - 466) <= 1  # the plan's own rounding: 466.9 steps fitted


def test_a_slower_epoch_shortens_the_remaining_epochs_instead_of_dropping_one():
    plan = _plan()
    # 5% slower: 52.08 s an epoch, 3 done at 176.29 s; 600 - 23 - 176.29 - 60 = 340.71 s for 7
    # epochs: 48.67 s each less the 3 s validation at (52.08 - 3) / 466 = 0.1053 s a step: 433 steps.
    now = plan.planned_at + 3 * 52.08
    replanned = replan_remaining(plan, epochs_done=3, seconds_per_step=(52.08 - 3) / 466, now=now, split_steps=468)
    assert (replanned.epochs, replanned.changes) == (10, ((3, 433),))
    assert [replanned.steps_in_epoch(epoch) for epoch in (0, 2, 3, 9)] == [466, 466, 433, 433]
    assert replanned.total_steps == 3 * 466 + 7 * 433
    assert _ends_by(replanned, 3, now, (52.08 - 3) / 466) <= 600 - 23 - 60
    assert replanned.warmup_steps == plan.warmup_steps


def test_a_faster_epoch_lengthens_the_remaining_epochs_to_a_pass_of_the_split_then_adds_epochs():
    plan = _plan()
    # 40 s an epoch (0.0794 s a step), 3 done at 140.05 s: 376.95 s left. 7 to 9 epochs of a whole
    # pass (468 steps) fit; 10 epochs share (376.95 - 30) / 0.0794 = 4,369 steps as 10 x 436, more
    # than 9 x 468; 11 epochs would hold fewer.
    replanned = replan_remaining(plan, epochs_done=3, seconds_per_step=(40.0 - 3) / 466, now=plan.planned_at + 120.0, split_steps=468)
    assert (replanned.epochs, replanned.changes) == (13, ((3, 436),))
    assert _ends_by(replanned, 3, plan.planned_at + 120.0, (40.0 - 3) / 466) <= 600 - 23 - 60


def test_a_much_slower_machine_keeps_fewer_epochs_where_a_validation_less_buys_more_steps():
    plan = _plan()
    # 100 s an epoch (0.2082 s a step), 3 done at 320 s: 197 s left. 7 epochs would share 845
    # steps as 7 x 120; 2 epochs hold the most, 917 steps as 2 x 458 (one whole pass holds 468).
    replanned = replan_remaining(plan, epochs_done=3, seconds_per_step=(100.0 - 3) / 466, now=320.0, split_steps=468)
    assert (replanned.epochs, replanned.changes) == (5, ((3, 458),))
    assert _ends_by(replanned, 3, 320.0, (100.0 - 3) / 466) <= 600 - 23 - 60
    # No time left for another epoch: the run ends with the epochs it has.
    ended = replan_remaining(plan, epochs_done=3, seconds_per_step=(100.0 - 3) / 466, now=560.0, split_steps=468)
    assert (ended.epochs, ended.total_steps) == (3, 3 * 466)


def test_a_later_re_plan_keeps_the_lengths_of_epochs_already_run():
    plan = _plan()
    first = replan_remaining(plan, epochs_done=3, seconds_per_step=(52.08 - 3) / 466, now=plan.planned_at + 3 * 52.08, split_steps=468)
    # Epochs 4 and 5 ran at 433 steps, then steps got 10% dearer: epochs 6 on are re-planned, 4-5 stay.
    now = plan.planned_at + 3 * 52.08 + 2 * (433 * 0.1053 + 3)
    second = replan_remaining(first, epochs_done=5, seconds_per_step=1.1 * 0.1053, now=now, split_steps=468)
    assert second.changes[0] == (3, 433) and second.changes[1][0] == 5 and second.changes[1][1] < 433
    assert [second.steps_in_epoch(epoch) for epoch in (2, 3, 4)] == [466, 433, 433]
    assert _ends_by(second, 5, now, 1.1 * 0.1053) <= 600 - 23 - 60


def test_a_replanned_plan_survives_json_and_a_plan_saved_before_replanning_existed_loads():
    plan = _plan()
    replanned = replan_remaining(plan, epochs_done=3, seconds_per_step=0.1053, now=176.29, split_steps=468)
    again = replan_remaining(replanned, epochs_done=5, seconds_per_step=0.11, now=276.0, split_steps=468)
    assert len(again.changes) == 2 and Plan.from_json(again.to_json()) == again
    older = json.loads(plan.to_json())
    del older["changes"]
    assert Plan.from_json(json.dumps(older)) == plan
