"""Every command in README.md runs as written, checked without running it: each
`run_pipeline.py` command parses with the real parser (subcommand, flags, values), its
`--config` file exists and its `--set` keys and flags resolve to a valid config; `scripts/*.sh`
exist, are valid bash and get existing paths; `python -m bench` flags parse. Commands come
from ```bash blocks, indented blocks and inline code spans. Every `configs/*.yaml` loads and
validates."""

import dataclasses
import re
import shlex
import subprocess
from pathlib import Path

import pytest

import architectures
import run_pipeline
from pipeline.config import load_config, validate

REPO_ROOT = Path(__file__).resolve().parent.parent
README = (REPO_ROOT / "README.md").read_text()
OPTIONAL_PLACEHOLDER = re.compile(r"^\[[A-Z_]+\]$")  # `models [PATTERN]`: an argument one may leave out


def fenced_blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)


def indented_blocks(markdown: str) -> list[str]:
    """Markdown's indented code blocks (4 spaces, blank lines inside allowed), outside fences."""
    blocks, current = [], []
    for line in re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL).splitlines():
        if line.startswith("    ") or (current and not line.strip()):
            current.append(line[4:])
        elif current:
            blocks.append("\n".join(current).strip())
            current = []
    return blocks + (["\n".join(current).strip()] if current else [])


def inline_code(markdown: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL))


def shell_commands(script: str) -> list[list[str]]:
    """The words of each command of a shell snippet: a trailing backslash or an open quote
    continues a command on the next line, comments are dropped, and `bash -c '...'` counts as
    the commands inside it."""
    commands, pending = [], ""
    for line in script.replace("\\\n", " ").splitlines():
        pending += line + "\n"
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # a quote is still open
            continue
        pending = ""
        if "-c" in words and words[words.index("-c") - 1] == "bash":
            commands += shell_commands(words[words.index("-c") + 1])
        elif words:
            commands.append(words)
    assert not pending.strip(), f"unterminated quote in a README snippet: {pending!r}"
    return commands


def readme_commands() -> list[list[str]]:
    commands = [command for block in fenced_blocks(README, "bash") for command in shell_commands(block)]
    for block in indented_blocks(README):
        if not block.startswith(("import ", "from ")):  # Python examples, not shell
            commands += shell_commands(block)
    for span in inline_code(README):
        if span.startswith(("python ", "bash scripts/")):
            commands += shell_commands(span)
    return commands


def arguments_after(words: list[str], program: list[str]) -> list[str] | None:
    """What follows `program` (e.g. ["python", "run_pipeline.py"]) in a command, placeholders
    for optional arguments dropped; None when the command does not run `program`."""
    for start in range(len(words) - len(program) + 1):
        if words[start : start + len(program)] == program:
            return [word for word in words[start + len(program) :] if not OPTIONAL_PLACEHOLDER.match(word)]
    return None


COMMANDS = readme_commands()
PIPELINE_COMMANDS = [argv for words in COMMANDS if (argv := arguments_after(words, ["python", "run_pipeline.py"])) is not None]
SCRIPT_COMMANDS = [words[1:] for words in COMMANDS if words[:1] == ["bash"] and words[1].startswith("scripts/")]
BENCH_COMMANDS = [argv for words in COMMANDS if (argv := arguments_after(words, ["python", "-m", "bench"])) is not None]


def resolved_config(args):
    """The config a train or launch command would run with: defaults < --config < flags < --set."""
    overrides = {dotted: getattr(args, name) for name, (dotted, _, _) in run_pipeline.TRAIN_FLAGS.items()}
    config_path = str(REPO_ROOT / args.config) if args.config else None  # README paths are from the repository root
    return load_config(config_path, overrides, args.assignments)


def test_readme_commands_cover_every_subcommand_script_and_the_benchmarks():
    subcommands = {argv[0] for argv in PIPELINE_COMMANDS}
    assert subcommands == {"train", "launch", "evaluate", "predict", "export", "models"}, subcommands
    assert {words[0] for words in SCRIPT_COMMANDS} == {"scripts/run.sh", "scripts/test.sh"}
    assert BENCH_COMMANDS


@pytest.mark.parametrize("argv", PIPELINE_COMMANDS, ids=shlex.join)
def test_run_pipeline_command_parses_and_its_config_resolves(argv):
    args = run_pipeline._build_parser().parse_args(argv)  # a bad subcommand, flag or value: UserError
    if args.command in ("train", "launch"):
        config = resolved_config(args)  # a missing --config or an unknown --set key: UserError
        if config.data.dataset.startswith(("folder:", "idx:")):  # a path on the reader's machine
            config = dataclasses.replace(config, data=dataclasses.replace(config.data, dataset="fashion_mnist"))
        validate(config)
    if args.command == "models":
        assert architectures.names(args.pattern)


@pytest.mark.parametrize("words", SCRIPT_COMMANDS, ids=shlex.join)
def test_script_command_names_a_valid_script_and_existing_paths(words):
    script, *arguments = words
    assert (REPO_ROOT / script).is_file(), script
    syntax = subprocess.run(["bash", "-n", str(REPO_ROOT / script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    if script == "scripts/run.sh":  # arguments go to run_pipeline.py; none means the main job, as in main()
        argv = arguments if arguments and not arguments[0].startswith("-") else ["train", "--export", *arguments]
        run_pipeline._build_parser().parse_args(argv)
    else:  # arguments go to pytest
        for path in (argument for argument in arguments if not argument.startswith("-")):
            assert (REPO_ROOT / path.split("::")[0]).exists(), path


@pytest.mark.parametrize("argv", BENCH_COMMANDS, ids=shlex.join)
def test_bench_command_parses(argv):
    from bench.__main__ import _parse

    _parse(argv)


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs").glob("*.yaml")), ids=lambda path: path.name)
def test_every_recipe_loads_and_validates(path):
    config = load_config(str(path))
    if config.data.dataset.startswith("folder:"):  # the user's photos (finetune_folder.yaml): a path on their machine
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, dataset="fashion_mnist"))
    validate(config)
