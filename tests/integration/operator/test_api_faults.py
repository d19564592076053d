"""The real operator, SIGKILLed ten times during a burst of ten TransferJobs, through a faulty API server.

`chaos.run_chaos` does the work and lists every broken rule (its module docstring has the rules): here each
kind of rule gets its own assertion, so a failure says which one broke. The fault mix is
`chaos.default_plan` (409 Conflicts on one PATCH in ten: kopf drops the patch of a handler that gets one, the
status it carried included, the loss `reconcile`'s doubt about its cached status repairs).
"""

from __future__ import annotations

from pathlib import Path

from tests.integration.operator.chaos import TERMINAL, run_chaos

TRANSFERJOBS = 10
KILLS = 10
SEED = 4


def test_operator_kills_and_api_faults_leave_no_duplicate_job_no_lost_status_and_every_run_ended(
    tmp_path: Path,
) -> None:
    report = run_chaos(tmp_path / "chaos", transferjobs=TRANSFERJOBS, kills=KILLS, seed=SEED)
    summary = report.summary()
    assert len(report.kill_moments) == KILLS, summary
    injected = report.tally.get("injected", {})
    assert sum(injected.values()) > 0, summary
    # Every TransferJob ended, each with exactly one Job.
    assert report.ended == TRANSFERJOBS, summary
    assert set(report.phases) <= TERMINAL, summary
    assert (report.jobs_created, report.duplicate_jobs) == (TRANSFERJOBS, 0), summary
    # No status lost: run, jobName, observedGeneration, the terminal condition, the trainer's final word.
    assert report.lost_status == [], summary
    assert report.problems == [], summary
