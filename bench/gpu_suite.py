"""Every GPU check and benchmark in one command, each part in a process of its own with a time limit, so one
session on a GPU machine records them all (README, Performance, "How close to the hardware's limit (GPU)").

    python bench/gpu_suite.py [--layers 4] [--parts tests,sampling,train_step,smoke] [--out-dir bench/results/gpu]

Parts, in this order; a part whose packages are missing runs without them or is skipped, and says so:
1. tests:      `pytest -m gpu tests/test_gpu.py` (vLLM, Unsloth, and the transformers backends on the GPU)
2. sampling:   bench/sampling.py on a random Llama-3-8B-shaped model of `--layers` layers (gpu_smoke.build_model,
               built once here), bfloat16, backends transformers, compact and vllm (when installed): tokens/s
               and the fraction of the memory-bandwidth bound
3. train_step: bench/train_step.py on the same model, backends trl and unsloth (when installed): seconds per
               optimizer step and the fraction of the matrix-unit bound
4. smoke:      bench/gpu_smoke.py (vLLM sampling and an Unsloth DPO step), when both are installed
Writes each part's JSON and log into `--out-dir` and summary.md (each part's tables, ready for the README).
Exit code 0 when every part that ran passed, 1 when one failed or ran past its limit, 2 without a CUDA GPU.
The limits (LIMITS, our choice) keep the whole suite under 10 minutes on one H100-class GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ["tests", "sampling", "train_step", "smoke"]
LIMITS = {"tests": 150, "sampling": 180, "train_step": 150, "smoke": 120}  # seconds per part (our choice)


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def plan(parts: list[str], model_dir: Path, out_dir: Path, installed: set[str]) -> list[dict]:
    """One command per part: {part, cmd, limit_s, note} ({part, skip} when it cannot run here)."""
    py = sys.executable
    steps = []
    for part in parts:
        if part == "tests":
            cmd = [py, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
                   str(ROOT / "tests" / "test_gpu.py")]
            note = "" if {"vllm", "unsloth"} <= installed else "vLLM/Unsloth tests skip themselves where missing"
        elif part == "sampling":
            backends = ["transformers", "compact"] + (["vllm"] if "vllm" in installed else [])
            cmd = [py, str(ROOT / "bench" / "sampling.py"), "--model", str(model_dir), "--dtype", "bfloat16",
                   "--backends", ",".join(backends), "--max-new-tokens", "128",
                   "--out", str(out_dir / "sampling.json")]
            note = "" if "vllm" in installed else "without vllm (not installed)"
        elif part == "train_step":
            backends = ["trl"] + (["unsloth"] if "unsloth" in installed else [])
            cmd = [py, str(ROOT / "bench" / "train_step.py"), "--model", str(model_dir),
                   "--backends", ",".join(backends), "--out", str(out_dir / "train_step.json")]
            note = "" if "unsloth" in installed else "without unsloth (not installed)"
        elif part == "smoke":
            missing = sorted({"vllm", "unsloth"} - installed)
            if missing:
                steps.append({"part": part, "skip": f"needs {' and '.join(missing)}"})
                continue
            cmd = [py, str(ROOT / "bench" / "gpu_smoke.py"), "--out", str(out_dir / "gpu_smoke.json")]
            note = ""
        else:
            raise ValueError(f"unknown part {part!r}; parts: {', '.join(PARTS)}")
        steps.append({"part": part, "cmd": cmd, "limit_s": LIMITS[part], "note": note})
    return steps


def run_step(step: dict, out_dir: Path) -> dict:
    """Run one part with its limit; its output goes to <part>.log. A part past its limit is killed."""
    log = out_dir / f"{step['part']}.log"
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(step["cmd"], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            code = proc.wait(timeout=step["limit_s"])
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            code = "timeout"
    return {"part": step["part"], "ok": code == 0, "exit": code, "wall_s": round(time.perf_counter() - t0, 1),
            "note": step["note"], "log": log.name}


def summary(results: list[dict], machine: dict, out_dir: Path) -> str:
    """Markdown: the machine, then per part its status and the tables its log printed."""
    lines = [f"# GPU suite, {machine['date']}: {machine['gpu']}",
             f"torch {machine['torch']} (CUDA {machine['cuda']}); installed: {', '.join(machine['installed'])}", ""]
    for r in results:
        if "skip" in r:
            lines += [f"## {r['part']}: skipped ({r['skip']})", ""]
            continue
        status = "passed" if r["ok"] else ("ran past its limit" if r["exit"] == "timeout" else f"failed ({r['exit']})")
        lines += [f"## {r['part']}: {status}, {r['wall_s']} s" + (f"; {r['note']}" if r["note"] else ""), ""]
        text = (out_dir / r["log"]).read_text(errors="replace").splitlines()
        kept = [x for x in text if x.startswith("|") or x.startswith("bandwidth bound") or
                x.startswith("matrix-unit bound") or " passed" in x or " failed" in x or x.startswith("SKIPPED")]
        lines += (kept or text[-15:]) + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4, help="decoder layers of the Llama-3-8B-shaped model (8B: 32)")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "results" / "gpu"))
    args = ap.parse_args(argv)
    parts = args.parts.split(",")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f"--parts: unknown {unknown}; parts: {', '.join(PARTS)}")
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_suite: no CUDA GPU is visible (torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
              f"every part needs one", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_smoke

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    installed = {p for p in ("vllm", "unsloth") if _installed(p)}
    machine = {"date": time.strftime("%Y-%m-%d %H:%M"), "gpu": torch.cuda.get_device_name(0),
               "torch": torch.__version__, "cuda": torch.version.cuda, "installed": sorted(installed) or ["-"]}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        if {"sampling", "train_step"} & set(parts):
            t0 = time.perf_counter()
            machine["model"] = {**gpu_smoke.build_model(model_dir, args.layers),
                                "build_s": round(time.perf_counter() - t0, 1)}
            torch.cuda.empty_cache()
        for step in plan(parts, model_dir, out_dir, installed):
            if "skip" in step:
                results.append(step)
                print(f"gpu_suite: {step['part']} skipped ({step['skip']})", file=sys.stderr)
                continue
            print(f"gpu_suite: {step['part']} (at most {step['limit_s']} s) ...", file=sys.stderr, flush=True)
            results.append(run_step(step, out_dir))
            print(f"gpu_suite: {step['part']}: {'ok' if results[-1]['ok'] else 'FAILED'} "
                  f"in {results[-1]['wall_s']} s", file=sys.stderr, flush=True)
    (out_dir / "suite.json").write_text(json.dumps({**machine, "results": results}, indent=2) + "\n")
    text = summary(results, machine, out_dir)
    (out_dir / "summary.md").write_text(text + "\n")
    print(text)
    return 0 if all(r.get("ok", True) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
