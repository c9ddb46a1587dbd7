#!/usr/bin/env bash
# The first check on a machine with a GPU, in at most 8 minutes on one H100/H200:
#   a. the CUDA tests (tests/test_cuda.py)
#   b. the training step against pytorch/examples' loop on CUDA, and its share of the convolution limit
#      (train_throughput.py --conv-limit)
#   c. FID Inception throughput, CPU and CUDA (inception_throughput.py)
#   d. a short training of the default recipe scored by FID on the real sample (quality.py)
# Each part has its own time limit and writes NAME.log and NAME.json in the output folder; a failed
# part does not stop the others. The end is a Markdown summary for benchmarks/gpu_check.md (also
# written to summary.md there).
#
#   benchmarks/gpu_check.sh [OUT]                      # OUT: ${TMPDIR:-/tmp}/anime-dcgan-gpu-check
#   GPU_CHECK_SMOKE=1 benchmarks/gpu_check.sh [OUT]    # every part on the CPU at the smallest settings:
#                                                      # this script's own plumbing (tests/test_gpu_check.py)
#
# PYTHON names the interpreter (default: the repository's .venv/bin/python). Exit status: 0 when every
# part passed or was skipped, 1 when one failed, 2 without a CUDA device (and without GPU_CHECK_SMOKE).
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
smoke=${GPU_CHECK_SMOKE:-0}

if ! command -v "$python" >/dev/null; then
    echo "gpu_check.sh: no Python at $python; run make install, or name one in PYTHON" >&2
    exit 1
fi
if [ "$smoke" = 1 ]; then
    export CUDA_VISIBLE_DEVICES=""  # the CPU, even where there is a GPU
elif ! cuda=$("$python" -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null); then
    echo "gpu_check.sh: $python cannot import torch; run make install" >&2
    exit 1
elif [ "$cuda" != True ]; then
    echo "gpu_check.sh: no CUDA device here" >&2
    exit 2
fi

out_arg=${1:-${TMPDIR:-/tmp}/anime-dcgan-gpu-check}
mkdir -p "$out_arg" || exit 1  # mkdir says why
out=$(cd "$out_arg" && pwd)
cd "$repo" || exit 1

# Seconds per part. GPU run: 100 + 115 + 70 + 170 = 455, and 2 s each to stop, leave the queries
# around them within 8 minutes (gpu_check.md: what each part took on an H200). Smoke run: sized for a
# busy 2-core CPU.
if [ "$smoke" = 1 ]; then
    limits=(60 120 90 200)
    throughput_args=(--device cpu --precision fp32 --steps 2 --warmup 1 --repeats 1 --batch-size 8 --conv-limit)
    inception_args=(--images 4 --repeats 1 --fid-images 0)
    quality_args=(--steps 2 --batch-size 8 --samples 8)
else
    limits=(100 115 70 170)
    throughput_args=(--device cuda --steps 30 --warmup 5 --repeats 2 --conv-limit)
    # two rounds: TorchScript's profiling executor optimises the published network over its first calls
    inception_args=(--images 128 --repeats 2 --fid-images 0)
    quality_args=(--steps 2000 --samples 2000)
fi

sample=$("$python" -c 'import sys; sys.path.insert(0, "benchmarks"); from common import sample_zip; print(sample_zip())')
if [ "$smoke" = 1 ] && [ -f "$sample" ]; then
    # 16 of the real faces: enough for every part's plumbing, at a fraction of the CPU time
    "$python" - "$sample" "$out/smoke-sample.zip" <<'PY' || exit 1
import sys
import zipfile

source, target = sys.argv[1:]
with zipfile.ZipFile(source) as full, zipfile.ZipFile(target, "w") as smaller:
    for name in sorted(name for name in full.namelist() if name.endswith(".jpg"))[:16]:
        smaller.writestr(name, full.read(name))
PY
    sample=$out/smoke-sample.zip
    export ANIME_DCGAN_SAMPLE=$sample  # read by every benchmark (benchmarks/common.py)
fi

results=()  # NAME:STATUS:SECONDS of each part; STATUS "skipped" for a part not run
part_pid=""
# Ctrl-C or SIGTERM: stop the running part and all it started (its `timeout` leads their process group)
trap '[ -n "$part_pid" ] && kill -TERM -- "-$part_pid" 2>/dev/null; echo "gpu_check.sh: interrupted" >&2; exit 130' INT TERM

# run_part NAME LIMIT_S COMMAND...: COMMAND with its output in NAME.log, stopped after LIMIT_S seconds
run_part() {
    local name=$1 limit=$2 started=$SECONDS
    shift 2
    rm -f "$out/$name.json"  # a result left by an earlier check must not pass for this one's
    echo "gpu_check: $name, at most $limit s (log: $out/$name.log)"
    timeout --kill-after=2 "$limit" "$@" >"$out/$name.log" 2>&1 &  # in the background: the trap acts at once
    part_pid=$!
    wait "$part_pid"
    results+=("$name:$?:$((SECONDS - started))")
    part_pid=""
}

run_part cuda_tests "${limits[0]}" "$python" -m pytest -q tests/test_cuda.py
run_part train_throughput "${limits[1]}" "$python" benchmarks/train_throughput.py "${throughput_args[@]}" \
    --json-out "$out/train_throughput.json"
run_part inception_throughput "${limits[2]}" "$python" benchmarks/inception_throughput.py "${inception_args[@]}"
if [ -f "$sample" ]; then
    rm -rf "$out/quality-work"  # a fresh training: quality.py reuses one it finds there
    run_part quality "${limits[3]}" "$python" benchmarks/quality.py "${quality_args[@]}" --recipes default \
        --zip "$sample" --work "$out/quality-work" --json "$out/quality.json"
else
    echo "no sample at $sample (set ANIME_DCGAN_SAMPLE to use another copy)" >"$out/quality.log"
    results+=("quality:skipped:0")
fi

if [ "$smoke" = 1 ]; then
    gpu="none: GPU_CHECK_SMOKE=1 runs every part on the CPU"
else
    gpu=$(timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null |
          sort | uniq -c | sed -E 's/^ *([0-9]+) /\1 x /' | paste -sd ';' - | sed 's/;/; /g')
fi
versions=$("$python" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")')
revision=$(git describe --always --dirty 2>/dev/null || echo "unknown")

echo
"$python" - "$out" "$smoke" "${gpu:-unknown (nvidia-smi answered nothing)}" "$versions" "$revision" "${results[@]}" <<'PY'
"""Read each part's log and JSON (writing those of the parts that write none), print the summary."""
import contextlib
import datetime
import json
import re
import sys
from pathlib import Path

out, smoke, gpu, versions, revision = Path(sys.argv[1]), sys.argv[2] == "1", *sys.argv[3:6]
TIMED_OUT = {"124", "137"}  # timeout's status for a part it stopped (137: killed, having ignored SIGTERM)
TITLES = {
    "cuda_tests": "a. CUDA tests (tests/test_cuda.py)",
    "train_throughput": "b. training throughput against pytorch/examples (train_throughput.py)",
    "inception_throughput": "c. FID Inception throughput (inception_throughput.py)",
    "quality": "d. short training + FID on the real sample (quality.py, default recipe)",
}


class Unreadable(Exception):
    """A part that ended well but left no result to read."""


def cuda_tests(log: str) -> str:
    summaries = re.findall(r"^=*\s*((?:\d+ \w+(?:, )?)+) in [\d.]+s", log, re.MULTILINE)
    if not summaries:
        raise Unreadable("no pytest summary line")
    counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(count)
              for count, kind in re.findall(r"(\d+) (\w+)", summaries[-1])}
    (out / "cuda_tests.json").write_text(json.dumps(counts, indent=2))
    text = f"{counts.get('passed', 0)} passed, {counts.get('failed', 0)} failed, {counts.get('skipped', 0)} skipped"
    if counts.get("error"):
        text += f", {counts['error']} errors"
    reason = re.search(r"^SKIPPED \[\d+\] [^:]+:\d+: (.+)$", log, re.MULTILINE)
    if not counts.get("passed") and not counts.get("failed") and reason:
        return f"skipped ({text}: {reason.group(1)})"
    return text


def train_throughput(_log: str) -> str:
    report = json.loads((out / "train_throughput.json").read_text())
    return (f"project {report['project_images_per_s']:.1f} images/s ({report['project_precision']}"
            f"{', compiled' if report['project_compiled'] else ''}), pytorch/examples "
            f"{report['reference_images_per_s']:.1f} images/s: {report['project_over_reference']:.2f}x "
            f"({report['device']}, batch {report['batch_size']}, best of {report['repeats']}); "
            f"{report['project_fraction_of_conv_limit']:.0%} of the convolution limit, "
            f"ceiling {report['step_convolution_bound_fraction']:.0%}")


def table_rows(log: str) -> list[dict]:
    rows = []
    for device, network, batch, rate, per_cpu_second, ratio in re.findall(
            r"^\| (\w+) \| ([^|]+) \| (\d+) \| ([\d.]+) \(([\d.]+)\) \| ([\d.]+) \|$", log, re.MULTILINE):
        rows.append({"device": device, "network": network.strip(), "batch": int(batch), "images_per_s": float(rate),
                     "images_per_cpu_s": float(per_cpu_second), "x_published": float(ratio)})
    return rows


def inception_throughput(log: str) -> str:
    rows = table_rows(log)
    (out / "inception_throughput.json").write_text(json.dumps(rows, indent=2))
    device = "cpu" if smoke else "cuda"
    mine = [row for row in rows if row["device"] == device]
    if not mine:
        raise Unreadable(f"no {device} rows in its table")
    best = max(mine, key=lambda row: row["images_per_s"])
    return (f"{device}: {best['images_per_s']:.1f} img/s at best ({best['network']}), {best['x_published']:.2f}x "
            f"the published TorchScript (table below)")


def quality(_log: str) -> str:
    default = json.loads((out / "quality.json").read_text())[0]
    fid = next(key for key in default if key.startswith("fid_"))
    kid = next(key for key in default if key.startswith("kid_") and not key.endswith("_std"))
    return (f"{fid} {default[fid]:.2f}, {kid} {default[kid]:.4f}, swd_mean {default['swd_mean']:.1f} "
            f"(training {default['train_seconds']:.0f} s at {default['images_per_second']:.0f} images/s)")


failed = False
lines = [f"## GPU check, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
         + (" (smoke run: plumbing only)" if smoke else ""), "",
         f"- GPU: {gpu}", f"- {versions}", f"- revision {revision}"]
readers = {"cuda_tests": cuda_tests, "train_throughput": train_throughput,
           "inception_throughput": inception_throughput, "quality": quality}
table = []
for name, status, seconds in (argument.split(":") for argument in sys.argv[6:]):
    log_path = out / f"{name}.log"
    log = log_path.read_text(errors="replace")
    if status == "skipped":
        (out / f"{name}.json").write_text(json.dumps({"skipped": log.strip()}))
        result = f"skipped: {log.strip()}"
    elif status in TIMED_OUT:
        result, failed = f"FAILED (see {log_path}): timed out at its limit", True
    elif status != "0":
        result, failed = f"FAILED (see {log_path}): exit status {status}", True
        if name == "cuda_tests":
            with contextlib.suppress(Unreadable):  # which tests failed: the log says
                result += f"; {cuda_tests(log)}"
    else:
        try:
            result = readers[name](log)
        except (Unreadable, OSError, ValueError, KeyError, IndexError, StopIteration) as exc:
            result, failed = f"FAILED (see {log_path}): no result to read ({type(exc).__name__}: {exc})", True
    if name == "inception_throughput":
        table = [line for line in log.splitlines() if line.startswith("|") or line.startswith("img/s over")]
    lines.append(f"- {TITLES[name]}: {result}; {seconds} s")
if table:
    lines += ["", "Inception throughput (part c):", "", *table]
summary = "\n".join(lines) + "\n"
(out / "summary.md").write_text(summary)
print(summary, end="")
sys.exit(1 if failed else 0)
PY
