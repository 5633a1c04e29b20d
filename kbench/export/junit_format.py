"""JUnit XML, the test-report format CI systems show natively (GitHub Actions reporters, GitLab, Jenkins).

One ``<testsuite>`` for the jobs: a ``<testcase>`` per job (classname = problem, name = solution, time = the
job's wall time). A verdict that judged the solution's answers (``incorrect``, ``rejected``) is a
``<failure>``; a job that never produced a judged answer (``compile_error``, ``load_error``,
``runtime_error``, ``timeout``, ``crash``) is an ``<error>``, as a test that cannot run is in JUnit. Both carry
``message="verdict: reason"`` and ``type=verdict``. A reference that failed for a problem no solution ran on
is an ``<error>`` testcase named ``reference``. When a gate was applied, a second suite has a testcase per
gate check (classname ``gate``, name = problem). Without jobs but with gate checks (``kbench gate``), only
the gate suite is written.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from kbench.export.base import ExportContext, Exporter
from kbench.gate import GateCheck
from kbench.results import JobResult, Verdict

FAILURES = {Verdict.INCORRECT, Verdict.REJECTED}
DETAIL_LINES = 60  # the tail of a compiler's or Python's error text: where the cause usually is

# Characters XML 1.0 cannot hold at all (compiler output has ANSI escapes, say): ElementTree writes them,
# and then no parser reads the file.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: str) -> str:
    return _NOT_XML.sub("\ufffd", value)


class JunitExporter(Exporter):
    name = "junit"
    suffix = ".xml"

    def render(self, results: Sequence[JobResult], context: ExportContext) -> str:
        root = ET.Element("testsuites", name="kbench")
        if results or context.gate_checks is None:
            root.append(jobs_suite(results, context))
        if context.gate_checks is not None:
            root.append(gate_suite(context.gate_checks, context))
        for key in ("tests", "failures", "errors"):
            root.set(key, str(sum(int(suite.get(key, "0")) for suite in root)))
        root.set("time", f"{sum(float(suite.get('time', '0')) for suite in root):.3f}")
        ET.indent(root)
        return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _suite(name: str, context: ExportContext) -> ET.Element:
    suite = ET.Element("testsuite", name=_text(name))
    if context.metadata.get("host"):  # where the run ran, which need not be where this report is written
        suite.set("hostname", _text(str(context.metadata["host"])))
    if context.metadata.get("started_at"):
        suite.set("timestamp", str(context.metadata["started_at"]))
    properties = ET.SubElement(suite, "properties")
    for key in ("run_id", "device", "torch"):
        value = context.run_id if key == "run_id" else context.metadata.get(key)
        if value:
            ET.SubElement(properties, "property", name=key, value=_text(str(value)))
    return suite


def _count(suite: ET.Element) -> None:
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(1 for c in cases if c.find("failure") is not None)))
    suite.set("errors", str(sum(1 for c in cases if c.find("error") is not None)))
    suite.set("skipped", "0")
    suite.set("time", f"{sum(float(c.get('time', '0')) for c in cases):.3f}")


def _job_case(result: JobResult) -> ET.Element:
    case = ET.Element("testcase", classname=_text(result.problem), name=_text(result.solution))
    case.set("time", f"{result.wall_s:.3f}")
    if result.verdict != Verdict.CORRECT:
        tag = "failure" if result.verdict in FAILURES else "error"
        outcome = ET.SubElement(
            case, tag, message=_text(f"{result.verdict}: {result.reason}"), type=str(result.verdict)
        )
        body = [f"flags: {', '.join(result.flags)}"] if result.flags else []
        body += result.detail.strip().splitlines()[-DETAIL_LINES:]
        outcome.text = _text("\n".join(body))
    lines = []
    if result.speedup is not None:
        interval = ""
        if result.speedup_low is not None and result.speedup_high is not None:
            interval = f" [{result.speedup_low:.4g}, {result.speedup_high:.4g}]"
        times = f": {result.ref_ms:.4g} -> {result.new_ms:.4g} ms" if result.ref_ms and result.new_ms else ""
        lines.append(f"speedup {result.speedup:.4g}x{interval}{times}")
    if result.flags and result.verdict == Verdict.CORRECT:
        lines.append(f"flags: {', '.join(result.flags)}")
    lines += [f"warning: {w}" for w in result.warnings] + [f"note: {n}" for n in result.notes]
    if lines:
        ET.SubElement(case, "system-out").text = _text("\n".join(lines))
    return case


def jobs_suite(results: Sequence[JobResult], context: ExportContext) -> ET.Element:
    suite = _suite(f"kbench {context.run_id}".strip(), context)
    for result in results:
        suite.append(_job_case(result))
    for problem, error in sorted(context.reference_errors.items()):
        case = ET.SubElement(suite, "testcase", classname=_text(problem), name="reference", time="0.000")
        ET.SubElement(case, "error", message=_text(f"reference failed: {error}"), type="reference_failed")
    _count(suite)
    return suite


def gate_suite(checks: Sequence[GateCheck], context: ExportContext) -> ET.Element:
    suite = _suite(f"kbench gate {context.run_id}".strip(), context)
    for check in checks:
        case = ET.SubElement(suite, "testcase", classname="gate", name=_text(check.problem), time="0.000")
        if not check.passed:
            ET.SubElement(case, "failure", message=_text(check.reason), type="gate")
        else:
            ET.SubElement(case, "system-out").text = _text(f"{check.solution}: {check.reason}")
    _count(suite)
    return suite
