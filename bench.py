"""Benchmarks (standard-library timing; no timed assertions live in the tests).

    python bench.py quickstart [--output_dir runs/bench-quickstart]    # wall time of `python train.py`

Each benchmark prints the machine (cores, torch threads) with its figures and writes them as JSON.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent


def machine() -> dict:
    import torch

    return {
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def bench_quickstart(output_dir: Path, fresh_data: bool) -> dict:
    """Times the whole quickstart (data generation if absent, build, train, test evaluation, figures)."""
    if fresh_data:
        import shutil

        shutil.rmtree(REPO / "data" / "synthetic", ignore_errors=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "--output_dir", str(output_dir)],
                            cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"train.py failed with exit code {result.returncode}")
    metrics = json.loads((output_dir / "metrics.json").read_text())
    return {
        "quickstart_seconds": round(seconds, 1),
        "fresh_data": fresh_data,
        "test_f1": metrics["f1"],
        "groups_f1": {name: group["f1"] for name, group in metrics["groups"].items()},
        "text": metrics["text"],
        "steering": metrics["steering"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    quick = sub.add_parser("quickstart", help="time `python train.py` end to end")
    quick.add_argument("--output_dir", type=Path, default=REPO / "runs" / "bench-quickstart")
    quick.add_argument("--keep_data", action="store_true", help="reuse an already generated synthetic set")
    args = parser.parse_args(argv)

    report = {"machine": machine()}
    if args.command == "quickstart":
        report["quickstart"] = bench_quickstart(args.output_dir, fresh_data=not args.keep_data)
    text = json.dumps(report, indent=2)
    print(text)
    out = REPO / "runs" / f"bench-{args.command}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
