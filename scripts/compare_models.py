#!/usr/bin/env python
"""Compare the models the trainer can build, on the bundled demo forms (docs/MODELS.md).

Loads the FUNSD demo into a fresh DuckDB file, builds the views with dbt, then trains
each configuration as a user would (`python -m trainer train …` or `train-st …`), each
in its own process with its own empty artifact store, so every run embeds from
scratch. For each it records the eval split's accuracy, macro-F1, coverage and
selective accuracy at the default confidence threshold (from training.metrics), the
command's wall time and the process's peak RSS, and writes the table to
docs/MODELS.md between its markers.

    .venv/bin/python scripts/compare_models.py                 # every configuration
    .venv/bin/python scripts/compare_models.py --only embedding,default
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_docs import describe_machine, run_header, write_section  # noqa: E402
from process_memory import RssSampler  # noqa: E402

START = "<!-- compare_models.py: start -->"
END = "<!-- compare_models.py: end -->"
LIBRARIES = ("torch", "sentence-transformers", "scikit-learn", "duckdb")


@dataclass(frozen=True)
class Configuration:
    key: str
    title: str
    command: tuple[str, ...]  # after `python -m trainer`


CONFIGURATIONS = (
    Configuration("char-ngrams", "char n-grams only (baseline)", ("train", "--no-embedding", "--no-layout", "--no-neighbours")),
    Configuration("embedding", "frozen embedding only", ("train", "--no-char-ngrams", "--no-layout", "--no-neighbours")),
    Configuration("embedding+layout", "+ layout", ("train", "--no-char-ngrams", "--no-neighbours")),
    Configuration("embedding+layout+neighbours", "+ layout + neighbours", ("train", "--no-char-ngrams")),
    Configuration("default", "+ layout + neighbours + char n-grams (the default `train`)", ("train",)),
    Configuration("st-embedding", "`train-st`: fine-tuned embedding only", ("train-st", "--no-char-ngrams", "--no-layout", "--no-neighbours")),
    Configuration("st-default", "`train-st` with every family", ("train-st",)),
    Configuration("st-embedding-16k", "`train-st`, 16,000 pairs: fine-tuned embedding only",
                  ("train-st", "--fine-tune-max-pairs", "16000", "--no-char-ngrams", "--no-layout", "--no-neighbours")),
    Configuration("st-default-16k", "`train-st`, 16,000 pairs, every family",
                  ("train-st", "--fine-tune-max-pairs", "16000")),
)
EVAL_FIGURES = ("accuracy", "macro_f1", "coverage", "selective_accuracy")


def run(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``command``; return (wall seconds, peak RSS in MiB of its process tree:
    the trainer and, while it embeds, its encoder process, summed; scripts/process_memory.py)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = RssSampler(process.pid)
    sampler.start()
    output = process.stdout.read()
    process.wait()
    seconds = time.perf_counter() - started
    sampler.stop()
    if process.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed ({process.returncode}):\n{output}")
    return seconds, sampler.peak_kib / 1024


def eval_figures(env: dict[str, str], model_name: str) -> dict[str, float | None]:
    import duckdb

    with duckdb.connect(env["TRAINER_DUCKDB_PATH"], read_only=True) as connection:
        rows = connection.execute(
            "select m.name, m.value from training.metrics m join training.model_versions v using (run_id) "
            "where v.model_name = ? and m.split = 'eval' and m.label is null",
            [model_name],
        ).fetchall()
    return dict(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated configuration keys: " + ", ".join(c.key for c in CONFIGURATIONS))
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "MODELS.md")
    parser.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    options = parser.parse_args(argv)
    chosen = [c for c in CONFIGURATIONS if not options.only or c.key in options.only.split(",")]
    if options.only and len(chosen) != len(options.only.split(",")):
        parser.error(f"unknown configuration in --only {options.only!r}")

    work = options.work or Path(tempfile.mkdtemp(prefix="compare-models-"))
    work.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    env = dict(os.environ, TRAINER_TARGET="duckdb", TRAINER_DUCKDB_PATH=str(work / "demo.duckdb"),
               DBT_SEND_ANONYMOUS_USAGE_STATS="false")
    Path(env["TRAINER_DUCKDB_PATH"]).unlink(missing_ok=True)
    setup_env = dict(env, TRAINER_ARTIFACTS_URL=str(work / "artifacts-setup"))
    run([python, "-m", "trainer", "init-db", "--with-app-tables"], setup_env)
    run([python, "-m", "trainer", "load-demo"], setup_env)
    run([str(Path(python).parent / "dbt"), "build", "--profiles-dir", "profiles", "--target", "duckdb",
         "--target-path", str(work / "dbt-target"), "--log-path", str(work / "dbt-logs"), "--log-level", "error"], setup_env)

    # Figures of earlier invocations with the same --work are kept, so configurations can be
    # measured one at a time (e.g. only the slow train-st ones again) into one table.
    saved_file = work / "results.json"
    saved = json.loads(saved_file.read_text()) if saved_file.exists() else {}
    for configuration in chosen:
        model_name = "compare-" + configuration.key.replace("+", "_")
        run_env = dict(env, TRAINER_ARTIFACTS_URL=str(work / f"artifacts-{configuration.key}"))
        command = [python, "-m", "trainer", *configuration.command, "--model-name", model_name, "--quiet"]
        seconds, peak_mib = run(command, run_env)
        figures = eval_figures(env, model_name)
        saved[configuration.key] = {"seconds": seconds, "peak_mib": peak_mib, "figures": figures}
        saved_file.write_text(json.dumps(saved, indent=2))
        print(f"{configuration.key:30s} " + " ".join(f"{name} {figures.get(name) or 0:.3f}" for name in EVAL_FIGURES)
              + f"  {seconds:.0f} s  {peak_mib:.0f} MiB", flush=True)

    results = [
        (c, saved[c.key]["seconds"], saved[c.key]["peak_mib"], saved[c.key]["figures"]) for c in CONFIGURATIONS if c.key in saved
    ]
    write_section(options.output, render(results, sys.argv[1:] if argv is None else argv), START, END)
    print(f"wrote {options.output}")
    return 0


def render(results, argv) -> str:
    info = describe_machine(LIBRARIES)
    invoked = "scripts/compare_models.py" + (" " + shlex.join(argv) if argv else "")
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [START, "", "## Comparison on the demo forms", ""]
    lines += run_header(date, info, LIBRARIES, invoked, invoked)
    lines += [
        "",
        "Rows measured by earlier invocations with the same `--work` are kept (results.json there), so the "
        "command above may have measured only some of them; each row's command repeats it alone. "
        "Eval split of the project's split (CONTRACT §3, 20% of documents), default confidence threshold 0.5. "
        "Time is the wall time of the whole command (start-up, reading, embedding every text from an empty "
        "store, fitting, evaluating, saving); peak RSS is the largest sum of the resident memory of its "
        "processes (the trainer and, while it embeds, its encoder process), sampled every 50 ms.",
        "",
        "| model | command | accuracy | macro-F1 | coverage | selective accuracy | time | peak RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_key = {}
    for configuration, seconds, peak_mib, figures in results:
        by_key[configuration.key] = figures
        cells = [f"{figures[name]:.3f}" if figures.get(name) is not None else "—" for name in EVAL_FIGURES]
        command = "python -m trainer " + " ".join(configuration.command)
        lines.append(f"| {configuration.title} | `{command}` | " + " | ".join(cells) + f" | {seconds:.0f} s | {peak_mib:,.0f} MiB |")
    lines += ["", "Targets (issue 7):", ""]
    if "default" in by_key:
        default = by_key["default"]
        met = default["accuracy"] >= 0.85 and default["macro_f1"] >= 0.75
        lines.append(
            f"- default `train`: accuracy {default['accuracy']:.3f} (target ≥ 0.85), macro-F1 {default['macro_f1']:.3f} "
            f"(target ≥ 0.75): **{'met' if met else 'NOT met'}**."
        )
    for fine_tuned, frozen in (("st-default", "default"), ("st-embedding", "embedding"),
                               ("st-default-16k", "default"), ("st-embedding-16k", "embedding")):
        if fine_tuned in by_key and frozen in by_key:
            gain = (by_key[fine_tuned]["macro_f1"] - by_key[frozen]["macro_f1"]) * 100
            seconds = next(s for c, s, _, _ in results if c.key == fine_tuned)
            met = gain >= 3 and seconds <= 600
            lines.append(
                f"- `train-st` ({fine_tuned}) against the same features frozen ({frozen}): macro-F1 {gain:+.1f} points "
                f"(target ≥ +3) in {seconds:.0f} s (target ≤ 600 s): **{'met' if met else 'NOT met'}**."
            )
    lines += ["", END, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
