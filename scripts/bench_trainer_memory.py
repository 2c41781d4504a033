#!/usr/bin/env python
"""Peak memory and wall time of `python -m trainer train` at a given scale.

Generates N synthetic annotations (`trainer.data.synthetic.synthetic_app_data`), loads them
into a fresh DuckDB (or PostgreSQL) workspace and builds the views with `dbt run`
(scripts/bench.py's helpers: setup, not measured), then runs the trainer as a child
process and samples the resident memory of its whole process tree from /proc every
``--interval`` seconds. It prints, per run: wall seconds, CPU seconds (user + system,
all threads: on a shared machine a steadier figure than wall time), the sampled peak
of the tree's summed RSS (the trainer and, on a cold run, its encoder process), and
each process's own high-water mark (VmHWM: exact and monotonic, read at every sample,
so only a peak in a process's last ``--interval`` could be missed).

Not ``ru_maxrss`` from wait4: Linux carries a process's high-water mark over exec, so
a child's ru_maxrss is at least the RSS of this script when it forked, which holds the
generated annotations (2,543 MiB at 1M: a cold and a warm run both reported exactly
that).

    .venv/bin/python scripts/bench_trainer_memory.py --annotations 1000000 [--runs 2]
        [--engine duckdb] [--workdir DIR] [--keep] [--artifacts DIR] [--trainer-arg --no-embedding-cache]

The first run of a fresh blob store is cold (every distinct text is embedded); later
runs find the vectors in the embedding cache. ``--artifacts DIR`` uses (and fills) a
blob store that outlives the workspace, so a later invocation starts warm;
``--workspace DIR`` reuses a workspace this script kept (``--keep``) without
generating or loading again. Run it with the project's virtualenv.
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
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

import bench  # scripts/bench.py: workspaces, loading, dbt
from process_memory import RssSampler

MIB = 1024 * 1024
SEED = bench.SEED


def run_trainer(space, artifacts: Path, extra: list[str], interval: float, log_path: Path) -> dict:
    command = [sys.executable, "-m", "trainer", "train", "--quiet", *extra]
    env = space.env(artifacts)
    started = time.perf_counter()
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, cwd=space.root, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        sampler = RssSampler(process.pid, interval)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        sampler.stop()
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"`{shlex.join(command)}` exited {process.returncode}; see {log_path}:\n"
                         + log_path.read_text()[-3000:])
    with space.database().session() as session:
        run_id, params, n_train, n_eval = session.fetchone(
            "select run_id, params, train_examples, eval_examples from training.training_runs "
            "order by run_id desc limit 1")
    params = json.loads(params) if isinstance(params, str) else params
    return {
        "run_id": run_id,
        "seconds": seconds,
        "examples": n_train + n_eval,
        "sampled_peak_tree_mib": sampler.peak_kib / 1024,
        "sampled_peak_at_s": sampler.peak_at,
        "samples": sampler.samples,
        "processes_seen": len(sampler.hwm_kib),
        # Each process's own high-water mark (VmHWM) as last sampled: the trainer first,
        # then, on a cold run, its encoder process (trainer.model.encoder.process).
        "vm_hwm_mib_by_process": [round(kib / 1024) for kib in sampler.hwm_kib.values()],
        "trainer_vm_hwm_mib": round(sampler.hwm_kib.get(process.pid, 0) / 1024),
        # CPU seconds of the trainer (all its threads): unlike wall time, not stretched by other load.
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "embedded_texts": params.get("embedded_texts"),
        "embedding_cache_hits": params.get("embedding_cache_hits"),
    }


def prepare(args) -> bench.Workspace:
    if args.workspace is not None and (args.workspace / "prepared.json").is_file():
        meta = json.loads((args.workspace / "prepared.json").read_text())
        bench.log(f"reusing workspace {args.workspace} ({meta['annotations']:,} annotations, {meta['engine']})")
        args.annotations = meta["annotations"]
        return bench.Workspace(args.workspace, meta["engine"], meta.get("pg_database"))
    from trainer.data.synthetic import synthetic_app_data

    parent = args.workdir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    space = bench.new_workspace(parent, args.engine, args.annotations, [])
    started = time.perf_counter()
    data = synthetic_app_data(args.annotations, seed=SEED)
    bench.log(f"generated {data.annotations.num_rows:,} annotations in {time.perf_counter() - started:.1f} s")
    bench.load_app_data(space, data)
    del data
    completed = subprocess.run(bench._dbt_command(space, "run"), cwd=bench.ROOT, env=space.env(),
                               capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"dbt run failed:\n{completed.stdout[-4000:]}")
    (space.root / "prepared.json").write_text(json.dumps(
        {"annotations": args.annotations, "engine": args.engine, "pg_database": space.pg_database}))
    bench.log(f"workspace {space.root} ready ({time.perf_counter() - started:.1f} s)")
    return space


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotations", type=int, default=100_000)
    parser.add_argument("--engine", choices=bench.ENGINES, default="duckdb")
    parser.add_argument("--runs", type=int, default=1, help="trainer runs, one after another (default 1)")
    parser.add_argument("--workdir", type=Path, help="where the workspace is created (default: TMPDIR)")
    parser.add_argument("--workspace", type=Path, help="reuse a workspace kept by an earlier --keep")
    parser.add_argument("--keep", action="store_true", help="keep the workspace (database and blob store)")
    parser.add_argument("--artifacts", type=Path, help="blob store (default: the workspace's own, fresh)")
    parser.add_argument("--interval", type=float, default=0.05, help="RSS sampling interval, seconds")
    parser.add_argument("--trainer-arg", action="append", default=[], help="extra argument for `trainer train`")
    args = parser.parse_args(argv)

    space = prepare(args)
    artifacts = args.artifacts or space.root / "artifacts"
    try:
        with space.database().session() as session:
            examples = int(session.scalar("select count(*) from datasets.training_examples"))
            distinct = int(session.scalar("select count(distinct text) from datasets.training_examples"))
        bench.log(f"{examples:,} examples, {distinct:,} distinct texts; blob store {artifacts}")
        results = []
        for index in range(args.runs):
            result = run_trainer(space, artifacts, args.trainer_arg, args.interval,
                                 space.root / f"trainer-{int(time.time())}-{index}.log")
            results.append(result)
            bench.log(
                f"run {result['run_id']}: {result['seconds']:.1f} s wall ({result['cpu_seconds']:.0f} CPU s), "
                f"trainer peak RSS {result['trainer_vm_hwm_mib']} MiB "
                f"(VmHWM), sampled tree peak {result['sampled_peak_tree_mib']:.0f} MiB at "
                f"{result['sampled_peak_at_s']:.1f} s ({result['processes_seen']} process(es), VmHWM each "
                f"{', '.join(str(value) for value in result['vm_hwm_mib_by_process'])} MiB); "
                f"embedded {result['embedded_texts']}, cache hits {result['embedding_cache_hits']}")
        print(json.dumps({"annotations": args.annotations, "engine": space.engine, "examples": examples,
                          "distinct_texts": distinct, "runs": results}, indent=2))
    finally:
        if not args.keep and args.workspace is None:
            bench.drop_workspace(space, [space.pg_database] if space.pg_database else [])
        elif args.keep:
            bench.log(f"kept workspace {space.root} (reuse with --workspace {space.root})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
