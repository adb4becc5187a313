"""The benchmark suite: speed, cost and time-to-accuracy of the zoo and the pipeline.

    python -m bench                          every table; writes BENCHMARKS.md and bench/results.json
    python -m bench --only zoo,pipeline      some tables, merged into the existing results
    python -m bench --quick --output-dir D   every table on tiny settings, into D (the smoke test)

One module per table (`zoo`, `vs_keras`, `input_pipeline`, `time_to_accuracy`, `exports`, `gpu`),
each with `run(context) -> dict`, the table's part of `results.json`; `report` renders
BENCHMARKS.md from `results.json` alone, so the document can be regenerated without measuring.
Rules every table follows: numbers are medians of repeated measurements (the count is
recorded), comparisons are ratios taken in the same process with A and B alternating (ABAB...),
and each table records the machine, the package versions and the exact command.
"""
