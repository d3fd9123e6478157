"""Helper of scripts/device_check.sh: the environment report and the final JSON + markdown table.

    python scripts/device_check.py env --out WORK/env.json
        Python/torch/CUDA versions, the GPU, nvidia-smi, and which modules the checks import
        (prints them; writes JSON; last line "cuda_available: yes|no").
    python scripts/device_check.py assemble --out OUT --work WORK
        Reads WORK/{env.json,parts.tsv} and OUT/{pytest_cuda.xml,bench_memory.json,
        bench_throughput.json} (whichever exist), writes OUT/device_check.json and
        OUT/device_check.md (our figures beside the paper's) and prints the markdown.

Standard library only at import time: the assembly must work even where torch is broken.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import platform
import shutil
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

#: The paper's GPU figures (SPEC §5 and §9): Retrieval, 2 x 4K bytes, 16 segments of 512.
PAPER = {"bptt_gb": 15.0, "amrb_gb": 3.4, "memory_ratio": 4.4, "rmaat_vs_rmt_speed": 1.73}

#: The shape the memory bench is run at (device_check.sh passes the same numbers): the memory
#: bench has no dual encoder, so the Retrieval pair (2 documents x 8 segments of 512 bytes) is
#: measured as one document of 16 segments of 512, which keeps what matters for memory: BPTT
#: holds 16 segments' activations, AMRB about one. Sizes of rmaat/configs/retrieval.yaml.
MEMORY_SHAPE = {"segments": 16, "segment_len": 512, "d_model": 128, "n_layers": 2, "n_heads": 4, "d_ff": 256,
                "batch": 32}
MEMORY_NOTE = ("closest shape the memory bench can express: ONE document of 16 x 512 tokens (the paper's "
               "Retrieval pair is 2 documents x 8 x 512 through a dual encoder; BPTT keeps 16 segments' "
               "activations and AMRB about one in both), d_model 128, 2 layers, 4 heads, d_ff 256, batch 32, "
               "fp32 (the bench uses no autocast), SGD; peak = torch.cuda.max_memory_allocated during one step "
               "minus what was allocated before it")
THROUGHPUT_NOTE = ("exact Retrieval shape: dual encoder, 2 documents x 4096 bytes, 8 segments of 512 per document, "
                   "d_model 128, 2 layers, batch 32, bf16 autocast, AdamW; tokens/s and peaks per preset, "
                   "median of rotating rounds")
#: Modules the checks import (a missing one is reported before anything runs).
MODULES = ("torch", "numpy", "click", "yaml", "tqdm", "xarray", "netCDF4", "matplotlib", "tensorboard", "pytest")
SKIPPED = "skipped: no CUDA device"


# ------------------------------------------------------------------------------------ env
def _run(command: list[str], timeout: float = 20.0) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"({command[0]} failed: {error})"
    return (done.stdout + done.stderr).strip()


def environment() -> dict[str, Any]:
    """Versions, the GPU and the importable modules; never raises."""
    env: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable,
                           "platform": platform.platform(), "cuda_available": False}
    missing = []
    for name in MODULES:
        try:
            module = importlib.import_module(name)
            with warnings.catch_warnings():  # click 8.2+ deprecates its __version__
                warnings.simplefilter("ignore")
                env.setdefault("modules", {})[name] = str(getattr(module, "__version__", "?"))
        except Exception as error:  # a broken install is as missing as an absent one
            first = str(error).splitlines()[0][:120] if str(error) else ""
            missing.append(f"{name} ({type(error).__name__}: {first})")
    env["missing_modules"] = missing
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
        env["cuda_available"] = bool(torch.cuda.is_available())
        if env["cuda_available"]:
            props = torch.cuda.get_device_properties(0)
            env["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                          "memory_gib": round(props.total_memory / 2**30, 1),
                          "multiprocessors": props.multi_processor_count, "count": torch.cuda.device_count()}
            env["cudnn"] = torch.backends.cudnn.version()
            try:
                env["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
            except Exception as error:
                env["nccl"] = f"unavailable ({type(error).__name__})"
    except Exception as error:
        env["torch_error"] = f"{type(error).__name__}: {error}"
    env["nvidia_smi"] = _run(["nvidia-smi"])
    env["nvidia_smi_query"] = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                    "--format=csv,noheader"])
    return env


def cmd_env(args: argparse.Namespace) -> int:
    env = environment()
    Path(args.out).write_text(json.dumps(env, indent=1))
    print(f"python {env['python']} ({env['executable']}); {env['platform']}")
    print(f"torch {env.get('torch', '-')}, built for CUDA {env.get('torch_cuda') or '-'}; "
          f"cuDNN {env.get('cudnn', '-')}; NCCL {env.get('nccl', '-')}")
    if "torch_error" in env:
        print(f"torch does not import: {env['torch_error']}")
    gpu = env.get("gpu")
    print(f"GPU: {gpu['name']} (sm {gpu['capability']}, {gpu['memory_gib']} GiB, {gpu['count']} device(s))"
          if gpu else "GPU: none visible to torch")
    print("nvidia-smi:", "not found" if env["nvidia_smi"] is None else "")
    if env["nvidia_smi"]:
        print(env["nvidia_smi"])
    if env["missing_modules"]:
        print("MISSING modules (the checks that import them will fail): " + "; ".join(env["missing_modules"]))
        if any(m.startswith("netCDF4") for m in env["missing_modules"]):
            print("  netCDF4 reads the retention table (rmaat presets, trainer, throughput bench); carry its wheels "
                  "(netCDF4, cftime) in .whl/ and device_check.sh installs them")
    print(f"cuda_available: {'yes' if env['cuda_available'] else 'no'}")
    return 0


# ------------------------------------------------------------------------------------ assemble
def _last_json(path: Path) -> dict[str, Any] | None:
    """The last line of a bench's stdout that parses as a JSON object (None if none)."""
    if not path.is_file():
        return None
    for line in reversed(path.read_text(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def read_parts(path: Path) -> list[dict[str, Any]]:
    """parts.tsv rows: name, status, rc, seconds, command, note."""
    parts = []
    if path.is_file():
        for line in path.read_text().splitlines():
            name, status, rc, seconds, command, note = (line.split("\t") + [""] * 6)[:6]
            parts.append({"name": name, "status": status, "rc": int(rc) if rc.lstrip("-").isdigit() else None,
                          "seconds": float(seconds) if seconds else None, "command": command, "note": note})
    return parts


def read_junit(path: Path) -> dict[str, Any] | None:
    """Counts and per-test outcomes of a pytest junit XML report (None if absent or unreadable)."""
    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        return {"error": f"unreadable junit report: {error}"}
    cases = []
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            child = case.find(tag)
            if child is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                text = (child.get("message") or child.text or "").strip()
                message = text.splitlines()[0][:300] if text else ""
                break
        cases.append({"name": f"{case.get('classname', '')}::{case.get('name', '')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0.0), "message": message})
    counts = {k: sum(1 for c in cases if c["outcome"] == k) for k in ("passed", "failed", "error", "skipped")}
    return {"total": len(cases), **counts, "seconds": round(sum(c["seconds"] for c in cases), 2), "cases": cases}


def memory_figures(bench: dict[str, Any] | None) -> dict[str, Any] | None:
    """BPTT and AMRB peaks/times at the memory shape's segment count."""
    if not bench:
        return None
    rows = {(r["segments"], r["mode"]): r for r in bench.get("rows", [])}
    t = MEMORY_SHAPE["segments"]
    bptt, amrb = rows.get((t, "bptt")), rows.get((t, "amrb"))
    if bptt is None or amrb is None:
        return {"error": f"no bptt/amrb rows at {t} segments", "rows": bench.get("rows")}
    return {"shape": MEMORY_SHAPE, "note": MEMORY_NOTE, "method": bptt.get("method"), "device": bptt.get("device"),
            "bptt_peak_bytes": bptt["peak_bytes"], "amrb_peak_bytes": amrb["peak_bytes"],
            "memory_ratio": bptt["peak_bytes"] / max(amrb["peak_bytes"], 1),
            "bptt_step_s": bptt["step_seconds"], "amrb_step_s": amrb["step_seconds"],
            "time_ratio_amrb_over_bptt": amrb["step_seconds"] / bptt["step_seconds"], "rows": bench["rows"]}


def throughput_figures(bench: dict[str, Any] | None) -> dict[str, Any] | None:
    """Speeds relative to RMT, and RMAAT's AMRB vs BPTT memory and time at the exact shape."""
    if not bench:
        return None
    rows = {r["preset"]: r for r in bench.get("rows", [])}
    out: dict[str, Any] = {"note": THROUGHPUT_NOTE, "rows": bench.get("rows"), "summary": bench.get("summary")}
    rmt = rows.get("rmt")
    for name in ("rmaat", "rmaat:bptt", "transformer"):
        if rmt is not None and name in rows:
            out[f"{name}_vs_rmt_speed"] = rows[name]["tokens_per_s"] / rmt["tokens_per_s"]
    if "rmaat" in rows and "rmaat:bptt" in rows:
        amrb, bptt = rows["rmaat"], rows["rmaat:bptt"]
        out.update({"bptt_peak_bytes": bptt["peak_bytes"], "amrb_peak_bytes": amrb["peak_bytes"],
                    "memory_ratio": bptt["peak_bytes"] / max(amrb["peak_bytes"], 1),
                    "time_ratio_amrb_over_bptt": amrb["step_seconds"] / bptt["step_seconds"]})
    return out


def _gb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e9:.2f} GB"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def comparison(cuda: bool, parts: dict[str, dict], tests, memory, throughput) -> list[dict[str, str]]:
    """Rows of the markdown table: measure, ours, paper, source (how measured)."""
    def row(measure: str, figures: dict | None, part: str, render, paper: str, source: str) -> dict[str, str]:
        try:
            ours = render(figures)
        except (KeyError, TypeError):  # no figures: say why (skipped, timed out, failed)
            status = parts.get(part, {}).get("status", "not run")
            ours = SKIPPED if status == "skipped" and not cuda else f"no figure ({status})"
        return {"measure": measure, "ours": ours, "paper": paper, "source": source}

    mem_src = "bench memory (1 document of 16 x 512, fp32)"
    paper_pair = f"{PAPER['bptt_gb']} / {PAPER['amrb_gb']} GB ({PAPER['memory_ratio']}x)"
    rows = [
        row("peak memory, BPTT (Retrieval, 16 x 512)", memory, "memory", lambda f: _gb(f["bptt_peak_bytes"]),
            f"{PAPER['bptt_gb']} GB", mem_src),
        row("peak memory, AMRB (Retrieval, 16 x 512)", memory, "memory", lambda f: _gb(f["amrb_peak_bytes"]),
            f"{PAPER['amrb_gb']} GB", mem_src),
        row("memory BPTT / AMRB", memory, "memory", lambda f: _x(f["memory_ratio"]),
            f"{PAPER['memory_ratio']}x", "bench memory"),
        row("peak memory BPTT / AMRB, exact dual-encoder shape", throughput, "throughput",
            lambda f: f"{_gb(f['bptt_peak_bytes'])} / {_gb(f['amrb_peak_bytes'])} ({_x(f['memory_ratio'])})",
            paper_pair, "bench throughput, rmaat:bptt vs rmaat (bf16, AdamW)"),
        row("training speed RMAAT / RMT (tokens/s)", throughput, "throughput", lambda f: _x(f["rmaat_vs_rmt_speed"]),
            f"{PAPER['rmaat_vs_rmt_speed']}x", "bench throughput (Retrieval shape, bf16)"),
        row("training speed RMAAT (BPTT) / RMT", throughput, "throughput",
            lambda f: _x(f["rmaat:bptt_vs_rmt_speed"]), "-", "bench throughput"),
        row("training speed Transformer / RMT", throughput, "throughput",
            lambda f: _x(f["transformer_vs_rmt_speed"]), "-", "bench throughput"),
        row("step time AMRB / BPTT (16 x 512, fp32)", memory, "memory",
            lambda f: _x(f["time_ratio_amrb_over_bptt"]), "-", "bench memory (min of 2 steps)"),
        row("step time AMRB / BPTT (exact shape, bf16)", throughput, "throughput",
            lambda f: _x(f["time_ratio_amrb_over_bptt"]), "-", "bench throughput, rmaat vs rmaat:bptt"),
    ]
    if tests and "total" in tests:
        text = f"{tests['passed']} passed, {tests['failed']} failed, {tests['error']} errors, {tests['skipped']} skipped"
    else:
        text = f"no report ({parts.get('tests', {}).get('status', 'not run')})"
    rows.append({"measure": "`cuda` tests (pytest -m cuda)", "ours": text, "paper": "-",
                 "source": "tests/test_cuda.py"})
    return rows


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    gpu = env.get("gpu")
    lines = [f"# Device check ({report['created']})", "",
             f"- device: {gpu['name'] + ' (' + str(gpu['memory_gib']) + ' GiB)' if gpu else 'no CUDA device'}; "
             f"torch {env.get('torch', '-')} (CUDA {env.get('torch_cuda') or '-'}); "
             f"driver/GPU: {env.get('nvidia_smi_query') or '-'}",
             f"- missing modules: {', '.join(env.get('missing_modules') or []) or 'none'}", "",
             "| measure | ours | paper | how measured |", "|---|---|---|---|"]
    lines += [f"| {r['measure']} | {r['ours']} | {r['paper']} | {r['source']} |" for r in report["comparison"]]
    lines += ["", "GB = 10^9 bytes (the paper does not say which GB it means).", ""]
    if report.get("memory") and "note" in report["memory"]:
        lines.append(f"- memory bench: {report['memory']['note']}.")
    else:
        lines.append(f"- memory bench: {MEMORY_NOTE}.")
    lines.append(f"- throughput bench: {THROUGHPUT_NOTE}.")
    lines += ["", "| part | status | seconds |", "|---|---|---|"]
    for p in report["parts"]:
        note = f" ({p['note']})" if p["note"] else ""
        seconds = "-" if p["seconds"] is None else f"{p['seconds']:.0f}"
        lines.append(f"| {p['name']} | {p['status']}{note} | {seconds} |")
    tests = report.get("tests")
    if tests and tests.get("cases"):
        bad = [c for c in tests["cases"] if c["outcome"] in ("failed", "error")]
        if bad:
            lines += ["", "Failed tests:"] + [f"- {c['name']}: {c['message']}" for c in bad]
    return "\n".join(lines) + "\n"


def cmd_assemble(args: argparse.Namespace) -> int:
    out, work = Path(args.out), Path(args.work)
    env_path = work / "env.json"
    env = json.loads(env_path.read_text()) if env_path.is_file() else {"error": "no environment report"}
    cuda = bool(env.get("cuda_available"))
    parts = read_parts(work / "parts.tsv")
    by_name = {p["name"]: p for p in parts}
    tests = read_junit(out / "pytest_cuda.xml")
    memory = memory_figures(_last_json(out / "bench_memory.json")) if cuda else None
    throughput = throughput_figures(_last_json(out / "bench_throughput.json")) if cuda else None

    def missing(part: str) -> str:
        return SKIPPED if not cuda else f"no figures ({by_name.get(part, {}).get('status', 'not run')})"

    report = {
        "schema": "rmaat-device-check/1",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cuda_available": cuda, "environment": env, "parts": parts, "paper": PAPER,
        "tests": tests,
        "memory": memory or {"status": missing("memory"), "would_measure": MEMORY_NOTE},
        "throughput": throughput or {"status": missing("throughput"), "would_measure": THROUGHPUT_NOTE},
    }
    report["comparison"] = comparison(cuda, by_name, tests, memory, throughput)
    (out / "device_check.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (out / "device_check.md").write_text(text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_env = sub.add_parser("env", help="environment report")
    p_env.add_argument("--out", required=True, help="JSON file to write")
    p_asm = sub.add_parser("assemble", help="device_check.json and device_check.md")
    p_asm.add_argument("--out", required=True, help="the OUT folder")
    p_asm.add_argument("--work", required=True, help="the script's work folder (env.json, parts.tsv)")
    args = parser.parse_args(argv)
    return {"env": cmd_env, "assemble": cmd_assemble}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
