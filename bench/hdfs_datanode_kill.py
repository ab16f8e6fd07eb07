"""Benchmark: exporting a model version to HDFS with two DataNodes up, against the same export with a DataNode
killed (SIGKILL, by PID) in the middle of it, and what the client saw.

Each run publishes a fresh model version through ``ModelStoreHook.publish`` with the pipeline's settings (the
`webhdfs_default` Connection, 8 parallel uploads): TF Serving's half_plus_two plus SHARDS asset files of
SHARD_MIB MiB (random bytes). Three cases, interleaved run by run so the machine's drift hits them alike:
- ``two_up``: both DataNodes up;
- ``kill_receiving``: the DataNode that the 3rd file's upload streams through is killed once that upload's first
  MiB has left (include/scripts/datanode_kill.py); its uploads break and are written again;
- ``kill_other``: the same moment, the other DataNode is killed; the block pipelines drop it inside HDFS.
After a kill the version is checked (listing against the manifest; fsck: no corrupt or missing block), the
DataNode is started again (`stack.up_datanode`, not timed in the export) and the time until every block of the
version has two live replicas again is measured. What the client saw: every WebHDFS write attempt of the publish,
with its outcome (the exception class when it broke), and the publish's result or error.

Ratios are of medians: ``kill_*_to_two_up``. The stack is the one TFDEPLOY_STACK names, by default the TEST stack
(its models never land in your store). Results: bench/results/hdfs_datanode_kill.{json,md}.

Run: .venv/bin/python bench/hdfs_datanode_kill.py [--runs 5] [--shards 6] [--shard-mib 4]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from _common import RESULTS, ROOT, bootstrap, write_json

bootstrap(stack_flag=False)  # TFDEPLOY_STACK, else the test stack (never litter the user's store)

from datanode_kill import MidUploadKill, restart_stopped_datanodes  # noqa: E402

import stack  # noqa: E402
from tfdeploy.core import manifest as mf  # noqa: E402
from tfdeploy.hooks.model_store import ModelStoreHook  # noqa: E402
from tfdeploy.hooks.model_store.client import DATANODE_RETRY_DELAYS  # noqa: E402
from tfdeploy.settings import get_settings  # noqa: E402

HALF_PLUS_TWO = ROOT / "tests" / "data" / "tfserving-testdata" / "saved_model_half_plus_two_cpu" / "00000123"
CASES = ("two_up", "kill_receiving", "kill_other")


def make_export(where: Path, shards: int, shard_mib: int) -> Path:
    root = where / "export"
    shutil.copytree(HALF_PLUS_TWO, root, copy_function=shutil.copyfile)
    for i in range(shards):
        (root / "assets" / f"shard-{i:02d}.bin").write_bytes(os.urandom(shard_mib << 20))
    return root


def kind(exc: Exception) -> str:
    """The exception's class, and for a broken connection how it broke."""
    text = str(exc)
    if "Connection refused" in text:
        return f"{type(exc).__name__} (refused: redirected to the dead DataNode)"
    if any(s in text for s in ("aborted", "reset", "RemoteDisconnected", "Broken pipe")):
        return f"{type(exc).__name__} (broken mid-upload)"
    return type(exc).__name__


class WriteLog:
    """Every WebHDFS write attempt of one hook's client: path, outcome (ok or the exception's class), seconds."""

    def __init__(self, store: ModelStoreHook) -> None:
        self.attempts: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        original = store.client.write

        def write(path: str, *args: Any, **kwargs: Any) -> Any:
            t0 = time.monotonic()
            outcome = "ok"
            try:
                return original(path, *args, **kwargs)
            except Exception as exc:
                outcome = kind(exc)
                raise
            finally:
                with self._lock:
                    self.attempts.append({"path": path, "outcome": outcome, "s": round(time.monotonic() - t0, 3)})

        store.client.write = write

    def summary(self) -> dict[str, Any]:
        outcomes = Counter(a["outcome"] for a in self.attempts)
        files = {a["path"] for a in self.attempts}
        return {"attempts": len(self.attempts), "files": len(files), "outcomes": dict(outcomes)}


def fsck_summary(settings: Any, path: str) -> dict[str, Any]:
    report = stack.hdfs_fsck(settings, path, blocks=True)

    def count(label: str) -> int | None:
        found = re.search(rf"{label}:\s+(\d+)", report)
        return int(found.group(1)) if found else None

    replicas = [int(n) for n in re.findall(r"Live_repl=(\d+)", report)]
    return {
        "healthy": "is HEALTHY" in report,
        "corrupt_blocks": count("Corrupt blocks"),
        "missing_blocks": count("Missing blocks"),
        "blocks_by_live_replicas": dict(Counter(replicas)),
    }


def one_run(settings: Any, export: Path, manifest: mf.Manifest, case: str) -> dict[str, Any]:
    store = ModelStoreHook("webhdfs_default")
    model = f"bench-dnkill-{uuid.uuid4().hex[:8]}"
    writes = WriteLog(store)
    row: dict[str, Any] = {"case": case, "model": model}
    kill = MidUploadKill(settings, store, nth=3, which=case.removeprefix("kill_")) if case != "two_up" else None
    t0 = time.monotonic()
    try:
        if kill:
            with kill:
                result = store.publish(export, model, 1, manifest=manifest)
        else:
            result = store.publish(export, model, 1, manifest=manifest)
        row["outcome"] = "completed"
        row["created"] = result.created
    except Exception as exc:  # noqa: BLE001 - reported
        row["outcome"] = f"failed: {type(exc).__name__}: {exc}"
    t_end = time.monotonic()
    row["export_s"] = round(t_end - t0, 3)
    row["client_saw"] = writes.summary()
    try:
        version_dir = store.version_dir(model, 1)
        if row["outcome"] == "completed":
            listing = store.walk_listing(version_dir)
            row["listing_matches_manifest"] = not mf.check_listing(manifest, listing, len(mf.encode_manifest(manifest)))
        row["left_in_model_dir"] = [name for name, _ in store.children(store.model_dir(model)) or []]
        if kill:
            row["killed"] = kill.killed
            row["receiving"] = kill.receiving
            if kill.killed_at is not None:
                row["start_to_kill_s"] = round(kill.killed_at - t0, 3)
                row["kill_to_end_s"] = round(t_end - kill.killed_at, 3)
            row["fsck_with_one_dead"] = fsck_summary(settings, store.model_dir(model))
            row["restart_s"] = round(kill.restart(), 1)
            t1 = time.monotonic()
            while time.monotonic() - t1 < 120:
                if set(fsck_summary(settings, version_dir)["blocks_by_live_replicas"]) == {2}:
                    break
                time.sleep(0.5)
            row["back_to_2_replicas_s"] = round(time.monotonic() - t1, 1)
        row["fsck"] = fsck_summary(settings, store.model_dir(model))
    finally:
        restart_stopped_datanodes(settings)
        store.remove_quietly(store.model_dir(model))
    return row


def median(rows: list[dict[str, Any]], case: str, key: str = "export_s") -> float | None:
    values = [r[key] for r in rows if r["case"] == case and r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--shards", type=int, default=6)
    parser.add_argument("--shard-mib", type=int, default=4)
    args = parser.parse_args()
    settings = get_settings()
    restart_stopped_datanodes(settings)
    with tempfile.TemporaryDirectory(prefix="bench-dnkill-") as tmp:
        export = make_export(Path(tmp), args.shards, args.shard_mib)
        manifest = mf.build_manifest(export)
        size_mib = manifest["total_bytes"] / (1 << 20)
        print(f"[bench] {settings.stack} stack; export {manifest['file_count']} files, {size_mib:.1f} MiB")
        warmup, name = ModelStoreHook("webhdfs_default"), f"bench-dnkill-warmup-{uuid.uuid4().hex[:6]}"
        warmup.publish(export, name, 1)
        warmup.remove_quietly(warmup.model_dir(name))
        rows = []
        for i in range(args.runs):
            for case in CASES:
                row = one_run(settings, export, manifest, case)
                rows.append(row)
                print(f"[bench] run {i + 1} {case}: {row['export_s']} s, {row['outcome']}, {row['client_saw']}")
    medians: dict[str, float] = {case: median(rows, case) or 0.0 for case in CASES}
    ratios = {f"{case}_to_two_up": round(medians[case] / medians["two_up"], 2) for case in CASES[1:]}
    after_kill = {
        case: {key: median(rows, case, key) for key in ("kill_to_end_s", "restart_s", "back_to_2_replicas_s")}
        for case in CASES[1:]
    }
    out = {
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "stack": settings.stack,
        "export": {"files": manifest["file_count"], "mib": round(size_mib, 1), "parallel_uploads": 8},
        "runs_per_case": args.runs,
        "median_export_s": medians,
        "ratios": ratios,
        "median_after_kill": after_kill,
        "rows": rows,
    }
    write_json("hdfs_datanode_kill", out)
    (RESULTS / "hdfs_datanode_kill.md").write_text(markdown(out))
    print(json.dumps({"median_export_s": medians, "ratios": ratios}))
    return 0


def markdown(out: dict[str, Any]) -> str:
    lines = [
        f"# HDFS export with a DataNode killed mid-export ({out['when']}, {out['stack']} stack)",
        "",
        f"Export: {out['export']['files']} files, {out['export']['mib']} MiB, ModelStoreHook.publish with "
        f"{out['export']['parallel_uploads']} parallel uploads; {out['runs_per_case']} runs per case, interleaved. "
        "Kill: SIGKILL of a DataNode once the 3rd upload's first MiB has left.",
        "",
        "| case | median export s | ratio to two up | outcomes | client write attempts (outcome: count) |",
        "|---|---|---|---|---|",
    ]
    for case in CASES:
        rows = [r for r in out["rows"] if r["case"] == case]
        outcomes = Counter(r["outcome"].split(":")[0] for r in rows)
        seen: Counter[str] = Counter()
        for r in rows:
            seen.update(r["client_saw"]["outcomes"])
        ratio = "1.00" if case == "two_up" else f"{out['ratios'][f'{case}_to_two_up']:.2f}"
        lines.append(f"| {case} | {out['median_export_s'][case]:.2f} | {ratio} | {dict(outcomes)} | {dict(seen)} |")
    lines += [
        "",
        "| case | median kill to end of export s | median DataNode restart s | median restart to 2 replicas s |",
        "|---|---|---|---|",
    ]
    for case, after in out["median_after_kill"].items():
        lines.append(f"| {case} | {after['kill_to_end_s']} | {after['restart_s']} | {after['back_to_2_replicas_s']} |")
    killed = [r for r in out["rows"] if r["case"] != "two_up"]
    failed = sum(r["outcome"] != "completed" for r in killed)
    mismatched = sum(r.get("listing_matches_manifest") is False for r in out["rows"])
    leftovers = sum(r.get("left_in_model_dir") not in (["1"], []) for r in out["rows"])
    damaged = sum(
        not f.get("healthy") or f.get("corrupt_blocks") or f.get("missing_blocks")
        for r in out["rows"]
        for f in (r.get("fsck_with_one_dead"), r.get("fsck"))
        if f
    )
    lines += [
        "",
        f"Exports with a kill that failed: {failed} of {len(killed)}. Versions whose listing differed from the "
        f"manifest: {mismatched}; runs that left a temp dir: {leftovers}; fsck reports with a corrupt or missing "
        f"block, or not HEALTHY (with one DataNode dead, and after): {damaged}.",
        "",
        "What the client saw: `ConnectionError (broken mid-upload)` is an upload that streamed through the killed "
        "DataNode (`RemoteDisconnected` / connection aborted); `ConnectionError (refused ...)` is a new upload the "
        "NameNode still redirected to the dead DataNode before it counted it as stale (3 s after its last heartbeat, "
        "seen by the NameNode's heartbeat check, every 5 s at most). Each such file was written again, whole, after "
        f"pauses of {', '.join(f'{d:g}' for d in DATANODE_RETRY_DELAYS)} s at most (`DATANODE_RETRY_DELAYS`); the "
        "export ends on the first retry after the NameNode stopped choosing the dead DataNode. With 8 parallel "
        "uploads and redirects spread over both DataNodes, the 'other' DataNode also serves uploads of its own, "
        "so both kill cases break uploads; in `kill_other` the held upload itself goes on inside HDFS (pipeline "
        "recovery). Blocks written while one DataNode was dead have one live replica until it is back; the "
        "NameNode then copies them.",
    ]
    lines += [
        "",
        "Per run:",
        "",
        "| case | export s | outcome | attempts / files | fsck | back to 2 replicas s |",
        "|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        fsck = r.get("fsck_with_one_dead") or r.get("fsck") or {}
        lines.append(
            f"| {r['case']} | {r['export_s']:.2f} | {r['outcome'][:80]} | {r['client_saw']['attempts']} / "
            f"{r['client_saw']['files']} | healthy={fsck.get('healthy')} corrupt={fsck.get('corrupt_blocks')} "
            f"missing={fsck.get('missing_blocks')} replicas={fsck.get('blocks_by_live_replicas')} | "
            f"{r.get('back_to_2_replicas_s', '')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
