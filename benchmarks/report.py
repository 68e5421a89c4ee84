"""Turn a run's JSON into the targets, a markdown table and a PNG chart.

``python -m benchmarks.report results/latest-full.json [--readme]`` rewrites the ``.md``
and ``.png`` beside it (the chart needs the ``bench`` extra: ``pip install -e '.[bench]'``)
and, with ``--readme``, the results section of ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .matrix import STOCK, MiB, writes_per_file
from .procs import placement

Case = dict[str, Any]
SOCKETS = ("unix", "tcp")


def _find(doc: dict[str, Any], **want: Any) -> list[Case]:
    return [c for c in doc["cases"] if all(c.get(k) == v for k, v in want.items())]


def _row(target: str, case: Case | None, measured: float | None, baseline: float | None,
         ratio: float | None, threshold: str, met: bool | None, note: str = "") -> dict[str, Any]:
    return {"target": target, "case": case["label"] if case else "", "measured": measured,
            "baseline": baseline, "ratio": ratio, "threshold": threshold, "met": met,
            "note": note}


def _vs(case: Case, name: str) -> tuple[float, float]:
    base = case["baselines"][name]
    return base["median"], base["ratio"]


def per_write(case: Case, who: str) -> float:
    """``who`` (``receiver``, ``host``) CPU us per WRITE; derived from the CPU s per GiB
    for a JSON written before the per-WRITE figures were."""
    if f"{who}_cpu_us_per_write" in case:
        return float(case[f"{who}_cpu_us_per_write"])
    size, files = int(case["size"]), int(case["files"]) * int(case["connections"])
    seconds_per_run = float(case[f"{who}_cpu_s_per_gib"]) * size * files / (1 << 30)
    return seconds_per_run * 1e6 / max(1, writes_per_file(size, int(case["fragment"])) * files)


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue-14 targets measured by this suite, one row per case that measures one."""
    rows: list[dict[str, Any]] = []
    pin = doc["machine"].get("pinning")
    split = pin is not None and pin["server"] != pin["client"]
    saw_note = "" if split else f"wants different CPUs; {placement(pin)}"

    def ratio_rows(target: str, cases: list[Case], baseline: str, minimum: float | None,
                   note: str = "") -> None:
        for case in cases:
            base, ratio = _vs(case, baseline)
            rows.append(_row(target, case, case["median"], base, ratio,
                             f">= {minimum}x" if minimum else "report",
                             ratio >= minimum if minimum else None, note))
        if not cases:
            rows.append(_row(target, None, None, None, None,
                             f">= {minimum}x" if minimum else "report", None,
                             "not measured in this mode"))

    def cpu_rows(target: str, cases: list[Case], who: str, limit: float,
                 note: str = "") -> None:
        for case in cases:
            us = per_write(case, who)
            rows.append(_row(target, case, us, None, None, f"<= {limit:g} us", us <= limit,
                             note))
        if not cases:
            rows.append(_row(target, None, None, None, None, f"<= {limit:g} us", None,
                             "not measured in this mode"))

    w64 = [c for t in SOCKETS
           for c in _find(doc, kind="copy", transport=t, window=64, fragment=STOCK, fsync=False)]
    cpu_rows("receiver CPU per 6144-byte WRITE, window 64", w64, "receiver", 3)
    saw = {t: _find(doc, kind="copy", transport=t, window=1, fragment=STOCK, fsync=False)
           for t in SOCKETS}
    cpu_rows("receiver CPU per stop-and-wait round trip, tcp", saw["tcp"], "receiver", 30,
             saw_note)
    cpu_rows("receiver CPU per stop-and-wait round trip, unix", saw["unix"], "receiver", 25,
             saw_note)
    ring = _find(doc, kind="copy", transport="vmbus-emu")
    cpu_rows("receiver CPU per message, vmbus-emu (stop-and-wait, full echo)", ring,
             "receiver", 15)
    for transport, echo, minimum in (("tcp", "trim", 0.55), ("unix", "trim", 0.7),
                                     ("tcp", "full", 0.5)):
        ratio_rows(f"window 64, 6144 B, {'trimmed' if echo == 'trim' else 'full (stock)'} "
                   f"echo, {transport}, vs raw copy",
                   [c for c in w64 if c["transport"] == transport and c["echo"] == echo],
                   "raw", minimum)
    ratio_rows("stop-and-wait, 6144 B, vs bare answer loop", saw["unix"] + saw["tcp"], "bare",
               0.9, saw_note)
    if ring:
        ratio_rows("stop-and-wait over vmbus-emu vs the bare answer loop on the ring", ring,
                   "bare", None, "no target: the ring's own cost")
    ratio_rows("window 8, 1 MiB, fsync off, vs raw copy",
               [c for t in SOCKETS for c in _find(doc, kind="copy", transport=t, window=8,
                                                  fragment=MiB, fsync=False)], "raw", 0.8)
    cpu_rows("host simulator CPU per 6144-byte WRITE, window 64", w64, "host", 3)
    rss = _find(doc, kind="rss")
    rss_note = ""
    if not rss and _find(doc, kind="copy"):
        rss = [max(_find(doc, kind="copy"), key=lambda c: float(c["receiver_peak_rss_mib"]))]
        rss_note = "no 4 GiB case in --quick: the highest peak of the one-copy cases"
    for case in rss:
        peak = case["receiver_peak_rss_mib"]
        rows.append(_row("receiver peak RSS receiving 4 GiB, any window", case, peak, None,
                         None, "< 64 MiB", peak < 64, rss_note))
    return rows


def _fmt(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def targets_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| target | case | measured | baseline | ratio | needs | met |",
             "|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]
        note = f" ({r['note']})" if r["note"] else ""
        lines.append(f"| {r['target']}{note} | {r['case']} | {_fmt(r['measured'])} | "
                     f"{_fmt(r['baseline'])} | {_fmt(r['ratio'], 2)} | {r['threshold']} | "
                     f"{met} |")
    return "\n".join(lines) + "\n"


def _cell(case: Case, name: str) -> str:
    base = case["baselines"].get(name)
    if base is None:
        return " | "
    return f"{base['median']:.1f} | {base['ratio']:.2f}x"


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    out = [f"# gsi benchmark ({doc['mode']})", "",
           f"`{doc['command']}` on {doc['started']}, {doc['seconds']:.0f} s. "
           f"{m['cpu']}, {m['cpus']} CPUs, {m['mem_gib']} GiB, {m['platform']}, "
           f"Python {m['python']}, trio {m['versions']['trio']}, commit "
           f"{m['git_commit'][:10]}. Placement: {placement(m.get('pinning'))}; load "
           f"average {m['loadavg_start'][0]:.2f} at the start.", "",
           "MB/s = 10^6 bytes/s (files/s for small files), median of the runs (min-max); "
           "each baseline ran in the same repetitions (right before the case), same "
           "transport, same bytes; ratio = median over the repetitions of case / baseline."
           + (" Before every timed run that writes a file (case, raw copy, pwrite, "
              "FileSink) a scratch file of its size was written and deleted where it writes."
              if all("writes_per_run" in c for c in doc["cases"]) else
              " This run predates the scratch file before each timed run and the per-WRITE "
              "figures: they are derived from its CPU seconds per GiB.")
           + " rx = the receiver process's CPU (utime + stime from /proc) per WRITE the case "
           "sends (ceil(size / fragment) per file, times files and connections; on "
           "vmbus-emu one WRITE is one ring message), peak RSS; host = the host driver's "
           "CPU over the timed span per WRITE; bare rx = the bare answer loop's CPU per "
           "WRITE of the same copy.",
           "", "## Targets", "", targets_markdown(doc["targets"]),
           "Measured elsewhere: the `--busy-poll` targets (`python -m benchmarks.rx_cpu`) and "
           "the memory of 256 open copies (`python -m benchmarks.open_copies_rss`).", "",
           "## All cases", "",
           "| case | median | min-max | raw copy | ratio | pwrite 6144 | ratio | bare loop | "
           "ratio | rx us/WRITE | host us/WRITE | bare rx us/WRITE | rx peak RSS MiB |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    sinks: list[str] = []
    for c in doc["cases"]:
        bare = c["baselines"].get("bare", {}).get("cpu_us_per_write")
        out.append(f"| {c['label']} | {c['median']:.1f} {c['unit']} | {c['min']:.1f}-"
                   f"{c['max']:.1f} | {_cell(c, 'raw')} | {_cell(c, 'pwrite')} | "
                   f"{_cell(c, 'bare')} | {per_write(c, 'receiver'):.1f} | "
                   f"{per_write(c, 'host'):.1f} | {_fmt(bare)} | "
                   f"{c['receiver_peak_rss_mib']:.1f} |")
        if "sink" in c["baselines"]:
            sink = c["baselines"]["sink"]
            sinks.append(f"| {c['label']} | {sink['median']:.1f} | "
                         f"{c['baselines']['pwrite']['median']:.1f} | {sink['vs_pwrite']:.2f}x |")
    if sinks:
        out += ["", "Write path alone (no network, 6144-byte writes, same file): gsi's FileSink "
                "(coalesced) vs one pwrite per fragment, in the same repetitions.", "",
                "| next to case | FileSink MB/s | pwrite MB/s | ratio |", "|---|---:|---:|---:|",
                *sinks]
    return "\n".join(out) + "\n"


def chart(doc: dict[str, Any], path: Path) -> bool:
    """Throughput vs window per fragment size (64 MiB, fsync off), baselines drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (pip install -e '.[bench]'): no chart", file=sys.stderr)
        return False
    transports = [t for t in SOCKETS if _find(doc, kind="copy", transport=t, fsync=False)]
    if not transports:
        return False
    fig, axes = plt.subplots(1, len(transports), figsize=(6.5 * len(transports), 4.8),
                             squeeze=False, sharey=True)
    size = min(c["size"] for t in transports
               for c in _find(doc, kind="copy", transport=t, fsync=False))
    for ax, transport in zip(axes[0], transports, strict=True):
        def pick(fragment: int, echo: str, transport: str = transport) -> list[Case]:
            found = _find(doc, kind="copy", transport=transport, fsync=False, size=size,
                          fragment=fragment, echo=echo)
            return sorted(found, key=lambda item: int(item["window"]))

        raw: list[float] = []
        pw: list[float] = []
        for (fragment, echo), color in zip(
                [(STOCK, "full"), (STOCK, "trim"), (64 * 1024, "trim"), (MiB, "trim")],
                ["tab:red", "tab:blue", "tab:green", "tab:purple"], strict=True):
            cases = pick(fragment=fragment, echo=echo)
            if not cases:
                continue
            label = f"{fragment // 1024} KiB" if fragment >= 1024 * 64 else f"{fragment} B"
            label += ", full echo (stock)" if echo == "full" else ", trimmed echo"
            windows = [c["window"] for c in cases]
            ax.errorbar(windows, [c["median"] for c in cases],
                        yerr=[[c["median"] - c["min"] for c in cases],
                              [c["max"] - c["median"] for c in cases]],
                        marker="o", color=color, label=f"gsi {label}", capsize=3)
            ax.plot(windows, [c["baselines"]["bare"]["median"] for c in cases],
                    linestyle="--", marker="x", color=color, alpha=0.6,
                    label=f"bare loop {label}")
            raw += [c["baselines"]["raw"]["median"] for c in cases]
            pw += [c["baselines"]["pwrite"]["median"] for c in cases]
        if raw:
            ax.axhline(sorted(raw)[len(raw) // 2], color="black", linestyle="-.",
                       label="raw copy (median)")
        if pw:
            ax.axhline(sorted(pw)[len(pw) // 2], color="gray", linestyle=":",
                       label="6144 B pwrite, no network (median)")
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 8, 64], ["1", "8", "64"])
        ax.set_yscale("log")
        ax.set_xlabel("window (requests in flight)")
        ax.set_title(f"{transport}, {size // MiB} MiB file, fsync off")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("MB/s (median, min-max bars)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"gsi throughput vs window and fragment size ({doc['mode']}, "
                 f"{doc['started']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


BEGIN = "<!-- results:begin (written by benchmarks/report.py) -->"
END = "<!-- results:end -->"


def update_readme(doc: dict[str, Any], readme: Path, chart_name: str) -> bool:
    """Replace the README's results section (between the markers) with this run's."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        return False
    body = markdown(doc).split("\n", 2)[2]  # without the title line
    body = body.replace("\n## ", "\n### ")
    section = (f"{BEGIN}\n\n![throughput vs window and fragment size](results/{chart_name})"
               f"\n\n{body}\n{END}")
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    readme.write_text(head + section + tail)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="rewrite the .md and .png of a results JSON")
    p.add_argument("json", type=Path)
    p.add_argument("--readme", action="store_true",
                   help="also put the results into benchmarks/README.md")
    args = p.parse_args(argv)
    doc = json.loads(args.json.read_text())
    doc["targets"] = targets(doc)
    args.json.with_suffix(".md").write_text(markdown(doc))
    chart(doc, args.json.with_suffix(".png"))
    if args.readme:
        update_readme(doc, Path(__file__).with_name("README.md"),
                      args.json.with_suffix(".png").name)
    print(targets_markdown(doc["targets"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
