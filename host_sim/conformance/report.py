"""The checker's report: one row per scenario, a summary line, JUnit XML."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from .model import Result, Scenario


def summary(results: Sequence[Result]) -> str:
    """``N passed, N failed, N skipped``."""
    counts = {outcome: sum(r.outcome == outcome for r in results)
              for outcome in ("PASS", "FAIL", "SKIP")}
    return f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped"


def row(result: Result) -> str:
    """One scenario: outcome, id, what was sent, expected, observed."""
    return (f"{result.outcome:<4}  {result.id}  sent: {result.sent}  expected: "
            f"{result.expected}  observed: {result.observed}")


def listing(scenarios: Sequence[Scenario]) -> list[str]:
    """``--list``: id, the profiles it applies to, title."""
    lines = []
    for sc in scenarios:
        na = ", ".join(f"N/A {p}" for p in sc.na)
        lines.append(f"{sc.id}  {sc.title}" + (f"  ({na})" if na else ""))
    return lines


def junit_xml(results: Sequence[Result], *, profile: str, url: str) -> ET.ElementTree:
    """A JUnit ``<testsuites>`` document: one testcase per scenario (classname = topic)."""
    suites = ET.Element("testsuites")
    suite = ET.SubElement(suites, "testsuite", {
        "name": f"host-sim check ({profile})",
        "tests": str(len(results)),
        "failures": str(sum(r.outcome == "FAIL" for r in results)),
        "errors": "0",
        "skipped": str(sum(r.outcome == "SKIP" for r in results)),
        "time": f"{sum(r.seconds for r in results):.3f}",
    })
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", {"name": "url", "value": url})
    ET.SubElement(props, "property", {"name": "profile", "value": profile})
    for r in results:
        case = ET.SubElement(suite, "testcase", {
            "classname": f"conformance.{profile}.{r.id.partition('.')[0]}",
            "name": r.id, "time": f"{r.seconds:.3f}"})
        if r.outcome == "FAIL":
            failure = ET.SubElement(case, "failure", {"message": r.observed})
            failure.text = f"sent: {r.sent}\nexpected: {r.expected}\nobserved: {r.observed}"
        elif r.outcome == "SKIP":
            ET.SubElement(case, "skipped", {"message": r.observed})
        ET.SubElement(case, "system-out").text = r.title
    ET.indent(suites)
    return ET.ElementTree(suites)


def write_junit(path: str | os.PathLike[str], results: Sequence[Result], *, profile: str,
                url: str) -> None:
    junit_xml(results, profile=profile, url=url).write(path, encoding="utf-8",
                                                       xml_declaration=True)
