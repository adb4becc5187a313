#!/usr/bin/env python3
"""convnets command line: one subcommand per pipeline step.

    python run_pipeline.py                      the main job: train the default recipe on Fashion-MNIST, export it
    python run_pipeline.py train [flags]        train, evaluate and save a run
    python run_pipeline.py launch --workers N [train flags]   multi-worker training on this machine
    python run_pipeline.py cluster-config --workers HOST:PORT,... --index N   worker N's TF_CONFIG
    python run_pipeline.py evaluate --run-dir RUN
    python run_pipeline.py predict --run-dir RUN IMAGE_OR_FOLDER...   (or --server URL --model-name NAME)
    python run_pipeline.py export --run-dir RUN [--formats saved_model,tflite,onnx] [--quantize none,int8]
    python run_pipeline.py models [PATTERN]     the zoo: parameters, GMACs, default input

Parsing, validation and one call per subcommand live here; the work lives in `pipeline/`
and `architectures/`. A `UserError` (bad input) prints one line to stderr and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time

from pipeline.quiet_start import import_tensorflow_quietly


EXIT_USER_ERROR = 2
MAIN_JOB_BUDGET = "10m"  # the README's promise for the main job, on any machine of ours


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line is a UserError like every other bad input."""

    def error(self, message: str):
        from architectures.errors import UserError

        raise UserError(f"{message} (see '{self.prog} --help')")


def _build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="run_pipeline.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ArgumentParser)

    train = subcommands.add_parser("train", help="train, evaluate and save a run (the default command)")
    _add_train_arguments(train)

    evaluate = subcommands.add_parser("evaluate", help="evaluate a run directory or a saved model on a test set")
    evaluate.add_argument("--run-dir", required=True, help="a run directory (or a .keras model file)")
    evaluate.add_argument("--dataset", help="evaluate on this dataset instead of the run's own")
    evaluate.add_argument("--batch-size", type=int, help="images per forward pass (default 256)")
    evaluate.add_argument("--test-time-flip", action="store_true",
                          help="also report accuracy averaged with each image's mirror (reported separately)")

    predict = subcommands.add_parser("predict", help="top-k labels for image files or folders")
    predict.add_argument("images", nargs="+", help="image files or folders of images")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-dir", help="a run directory (predict locally)")
    source.add_argument("--server", help="a TF Serving URL: http://host:8501 (REST) or grpc://host:8500")
    predict.add_argument("--model-name", help="the served model's name (with --server)")
    predict.add_argument("--top-k", type=int, default=3, help="labels per image (default 3)")

    export = subcommands.add_parser("export", help="SavedModel for TF Serving, TFLite for phones, with a report")
    export.add_argument("--run-dir", required=True, help="a completed run directory")
    _add_export_arguments(export)

    launch = subcommands.add_parser("launch", help="multi-worker training on this machine: N workers on loopback")
    launch.add_argument("--workers", type=int, required=True, help="number of worker processes")
    _add_train_arguments(launch)

    cluster_config = subcommands.add_parser("cluster-config", help="print one worker's TF_CONFIG (worker 0 is the chief)")
    cluster_config.add_argument("--workers", required=True, help="every worker's host:port, comma-separated, in order")
    cluster_config.add_argument("--index", type=int, required=True, help="this worker's position in --workers")

    models = subcommands.add_parser("models", help="list the zoo: parameters, GMACs, default input size")
    models.add_argument("pattern", nargs="?", default="*", help="shell wildcard, e.g. 'resnet*' (default: all)")
    models.add_argument(
        "--num-classes", type=int, default=1000, help="classifier width (default 1000; other widths build each variant)"
    )
    return parser


# Flags for the common knobs; anything else with --set section.key=value.
TRAIN_FLAGS = {
    "arch": ("model.arch", str, "architecture name (see 'models')"),
    "dataset": ("data.dataset", str, "fashion_mnist, mnist, tfds:NAME, folder:PATH, idx:DIR or an image folder's path"),
    "epochs": ("train.epochs", int, "training epochs (wins over a time budget)"),
    "time_budget": ("train.time_budget", str, "wall time for the whole job, e.g. 10m: the epochs are planned to fit"),
    "batch_size": ("train.batch_size", int, "global batch size, all replicas together"),
    "image_size": ("data.image_size", int, "square input side in pixels"),
    "weights": ("model.weights", str, "imagenet (keras.applications' file, from ~/.keras/models or downloaded) or a weights file"),
    "strategy": ("distribute.strategy", str, "auto, default, one_device, mirrored or multi_worker"),
    "output_dir": ("output_dir", str, "where run directories go (default runs/)"),
    "run_name": ("run_name", str, "run directory name (default <dataset>-<arch>)"),
    "seed": ("seed", int, "random seed"),
}


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--formats", type=_comma_list, default=["saved_model", "tflite", "onnx"],
                        help="comma-separated: saved_model, tflite, onnx (default all three)")
    parser.add_argument("--quantize", type=_comma_list, default=["none", "int8"],
                        help="TFLite variants, comma-separated: none, float16, dynamic, int8 (default none,int8)")
    parser.add_argument("--model-name", help="served model name (default: the run directory's name)")
    parser.add_argument("--version", type=int, help="version number (default: the next free one)")
    parser.add_argument("--export-dir", help="where exports go (default: <run-dir>/export)")
    parser.add_argument("--max-eval-examples", type=int, help="test images each artefact is measured on (default: all)")


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a YAML recipe, e.g. configs/fashion_mnist.yaml")
    for name, (_, value_type, help_text) in TRAIN_FLAGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=value_type, help=help_text)
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="any config field, e.g. --set train.learning_rate=0.05 (repeatable)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue a completed run (e.g. with more epochs)")
    group.add_argument("--overwrite", action="store_true", help="delete the run directory and start fresh")
    parser.add_argument("--export", action="store_true", help="export the run when training ends (as 'export' does)")


def _resolved_config(args: argparse.Namespace):
    from pipeline.config import load_config, validate

    overrides = {dotted: getattr(args, name, None) for name, (dotted, _, _) in TRAIN_FLAGS.items()}
    config = load_config(args.config, overrides, args.assignments)
    if args.epochs is not None and config.train.time_budget is not None:
        logging.getLogger("run_pipeline").info(
            "--epochs %d wins over train.time_budget %s: training runs %d epochs", args.epochs, config.train.time_budget, args.epochs
        )
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, time_budget=None))
    validate(config)
    return config


def _train(args: argparse.Namespace) -> int:
    from pipeline.run import train_run
    from pipeline.train import TrainingStopped

    started = time.perf_counter()
    config = _resolved_config(args)
    try:
        summary = train_run(config, resume=args.resume, overwrite=args.overwrite, exporting=args.export)
    except TrainingStopped as stopped:
        print(f"stopped: {stopped}", file=sys.stderr)
        return stopped.exit_code
    for line in summary.lines():
        print(line)
    if args.export and not summary.already_completed and summary.is_chief:
        _print_export(summary.run_dir, args)
        print(f"total wall time {time.perf_counter() - started:.0f} s (data, training, evaluation, export)")
    if config.train.time_budget is not None and summary.is_chief and not summary.already_completed:
        from pipeline.budget import job_seconds, parse_duration

        print(f"time budget: the job took {job_seconds():.0f} s of its {parse_duration(config.train.time_budget):.0f} s")
    return 0


def _print_export(run_dir, args: argparse.Namespace) -> None:
    from pipeline.export import export_run

    report = export_run(
        run_dir,
        formats=getattr(args, "formats", ["saved_model", "tflite", "onnx"]),
        quantize=getattr(args, "quantize", ["none", "int8"]),
        model_name=getattr(args, "model_name", None),
        version=getattr(args, "version", None),
        export_dir=getattr(args, "export_dir", None),
        max_eval_examples=getattr(args, "max_eval_examples", None),
    )
    print(report.table())


def _export(args: argparse.Namespace) -> int:
    _print_export(args.run_dir, args)
    return 0


def _launch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.launch import launch

    config = _resolved_config(args)  # fail here, once, rather than in every worker
    return launch(args.workers, _worker_arguments(args), config.run_dir, Path(__file__).resolve())


def _worker_arguments(args: argparse.Namespace) -> list[str]:
    """A parsed `launch` command line as the `train` command line each worker runs (no --workers)."""
    # --flag=value, so a value starting with "-" (--run-name=-x, --seed=-1) stays a value.
    arguments = [*(["--verbose"] if args.verbose else []), "train"]
    arguments += [f"--config={args.config}"] if args.config else []
    for name in TRAIN_FLAGS:
        if getattr(args, name) is not None:
            arguments.append(f"--{name.replace('_', '-')}={getattr(args, name)}")
    arguments += [f"--set={assignment}" for assignment in args.assignments]
    return arguments + [f"--{flag}" for flag in ("resume", "overwrite", "export") if getattr(args, flag)]


def _cluster_config(args: argparse.Namespace) -> int:
    from pipeline.cluster import parse_workers, worker_tf_config

    print(worker_tf_config(parse_workers(args.workers), args.index))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from pipeline.run import evaluate_run

    print(evaluate_run(args.run_dir, dataset=args.dataset, batch_size=args.batch_size, test_time_flip=args.test_time_flip))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from architectures.errors import UserError

    if args.server:
        from pipeline.serving_client import predict_with_server

        if not args.model_name:
            raise UserError("--server needs --model-name (the name TF Serving serves the model under)")
        predictions = predict_with_server(args.server, args.images, model_name=args.model_name, top_k=args.top_k)
    else:
        from pipeline.run import predict_images

        predictions = predict_images(args.run_dir, args.images, top_k=args.top_k)
    for path, labels in predictions:
        print(f"{path}: " + ", ".join(f"{name} {probability:.3f}" for name, probability in labels))
    return 0


def _models(args: argparse.Namespace) -> int:
    from architectures.zoo_table import print_zoo_table

    print_zoo_table(args.pattern, num_classes=args.num_classes)
    return 0


COMMANDS = {
    "train": _train,
    "launch": _launch,
    "cluster-config": _cluster_config,
    "evaluate": _evaluate,
    "predict": _predict,
    "export": _export,
    "models": _models,
}


def main(argv: list[str] | None = None) -> int:
    import_tensorflow_quietly()
    from architectures.errors import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--verbose")):
        argv = ["train", "--export", "--time-budget", MAIN_JOB_BUDGET, *argv]  # the main job: train the default recipe, then export it
    try:
        args = _build_parser().parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            datefmt="%H:%M:%S",
        )
        for chatty in ("absl", "tensorflow"):  # checkpoint-sharding and strategy-creation chatter
            logging.getLogger(chatty).setLevel(logging.WARNING)
        if args.command is None:  # only --verbose was given
            args = _build_parser().parse_args([*argv, "train"])
        return COMMANDS[args.command](args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
