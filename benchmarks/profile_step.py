"""Where the chunk step's time goes: one round of 256 steps under `tf.profiler`,
summed by op type and, for the matmuls, by the op that asked for them.

    TF_NUM_INTRAOP_THREADS=1 python benchmarks/profile_step.py              # charstream's loop
    TF_NUM_INTRAOP_THREADS=1 python benchmarks/profile_step.py --loop keras-cell

The round is `lstm_kernels.py`'s contender of that name (the default model, the
chunk step, 256 steps after an untimed one that traced the graph), profiled with
`host_tracer_level=3`. Printed: the round's wall time under the profiler (slower
than without), then per op type the summed time, the number of calls and the mean,
then the matmuls grouped by their name with the step numbers taken out (so a row
is, say, every step's gradient of `h @ U` with respect to `h`). Times are the ops'
own, on either of TensorFlow's inter-op threads, so they add up to more than the
wall time when both threads work.
"""
from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def trace_round(loop: str, logdir: str) -> float:
    """Profile one round of contender `loop` into `logdir`; its seconds."""
    import tensorflow as tf

    import lstm_kernels as lk

    lk.LOOPS = {loop: lk.LOOPS[loop]}
    train = lk.default_runs()[loop]
    train()   # warm: the first call after tracing allocates
    options = tf.profiler.experimental.ProfilerOptions(host_tracer_level=3)
    tf.profiler.experimental.start(logdir, options=options)
    start = time.perf_counter()
    train()
    seconds = time.perf_counter() - start
    tf.profiler.experimental.stop()
    return seconds


def op_events(logdir: str):
    """`(name, microseconds)` of every op the host tracer recorded."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(next(Path(logdir).rglob("*.xplane.pb")).read_bytes())
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if line.name.startswith("tf_Compute"):   # the executor's threads
                for event in line.events:
                    name = names.get(event.metadata_id, "?")
                    # "op name:op type"; "...:Process" is the executor's event
                    # around an op (counted once, as the op), the rest are scopes
                    if ":" in name and not name.endswith(":Process"):
                        yield name, event.duration_ps / 1e6


def table(rows: dict, limit: int) -> list[str]:
    out = []
    for key, (total, calls) in sorted(rows.items(), key=lambda kv: -kv[1][0])[:limit]:
        out.append(f"  {key[-72:]:72s} {total / 1e3:8.1f} ms {calls:7d} x {total / calls:6.1f} us")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loop", default="charstream",
                        help="an lstm_kernels.py contender (default: charstream)")
    parser.add_argument("--top", type=int, default=20, help="op types shown (default 20)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as logdir:
        seconds = trace_round(args.loop, logdir)
        by_type, matmuls = (collections.defaultdict(lambda: [0.0, 0]) for _ in range(2))
        for name, us in op_events(logdir):
            op, kind = name.rsplit(":", 1)
            for rows, key in ((by_type, kind), (matmuls, re.sub(r"\d+", "N", op))):
                if rows is by_type or "MatMul" in kind:
                    rows[key][0] += us
                    rows[key][1] += 1
    total = sum(t for t, _ in by_type.values())
    matmul = sum(t for kind, (t, _) in by_type.items() if "MatMul" in kind)
    print(f"{args.loop}: one round of 256 steps, {seconds:.3f} s under the profiler; "
          f"op time {total / 1e3:.1f} ms, matmuls {matmul / 1e3:.1f} ms "
          f"({matmul / total:.0%})")
    print("by op type:")
    print("\n".join(table(by_type, args.top)))
    print("matmuls, by op (step numbers as N):")
    print("\n".join(table(matmuls, 10)))


if __name__ == "__main__":
    main()
