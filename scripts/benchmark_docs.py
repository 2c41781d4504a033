"""What the benchmark scripts share: the machine a benchmark ran on, for the header of its
section in docs/BENCHMARKS.md, and writing that section between its markers."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def describe_machine(libraries: tuple[str, ...]) -> dict[str, str]:
    """CPUs, RAM, CPU model, kernel, Python, and the version of each library."""
    info = {"nproc": str(os.cpu_count())}
    try:
        info["nproc"] = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    meminfo = Path("/proc/meminfo").read_text()
    total = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.MULTILINE)
    info["ram"] = f"{int(total.group(1)) / 1024 / 1024:.1f} GiB" if total else "unknown"
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^(?:model name|Model|cpu model)\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    info["cpu"] = model.group(1).strip() if model else platform.processor() or "unknown"
    info["kernel"] = platform.release()
    info["python"] = platform.python_version()
    for library in libraries:
        try:
            info[library] = version(library)
        except PackageNotFoundError:
            info[library] = "not installed"
    return info


def run_header(date: str, info: dict[str, str], libraries: tuple[str, ...], command: str, invoked: str,
               also: str = "") -> list[str]:
    """The Date, Machine, software and Command lines that open every section; ``also`` is
    appended to the software line (e.g. a database server's version)."""
    return [
        f"- Date: {date}",
        f"- Machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram']} RAM, Linux {info['kernel']}",
        f"- Python {info['python']}; " + ", ".join(f"{name} {info[name]}" for name in libraries) + also,
        f"- Command: `{command}`" + (f" (invoked as `{invoked}`)" if invoked != command else ""),
    ]


def write_section(output: Path, section: str, start_marker: str, end_marker: str) -> None:
    """Replace the text between the markers (the previous run's section) with ``section``,
    which holds both markers; append it when the file has none yet. Other sections stay."""
    text = output.read_text(encoding="utf-8") if output.exists() else "# Benchmarks\n"
    start, end = text.find(start_marker), text.find(end_marker)
    if start != -1 and end != -1 and end > start:
        text = text[:start] + section.rstrip("\n") + text[end + len(end_marker):]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
