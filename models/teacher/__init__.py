"""The teacher: a frontier LLM that relabels drifted production samples within a hard budget.

Two implementations of one `Teacher` protocol:

* `OpenAICompatibleTeacher` asks a frontier model through `FrontierClient` (`models/frontier.py`,
  the OpenAI SDK: retries, timeouts, Retry-After, any OpenAI-compatible endpoint): several
  samples per call under a strict JSON schema, bounded concurrency, every answer checked against
  the schema and the workload's spec, one more call for answers outside them, cost from the
  reported token usage, a hard per-run budget cap and an on-disk response cache.
* `SimulatedTeacher` answers from the traffic simulator's hidden gold with a controlled rate of
  plausible mistakes, for demos and tests without an API key. Its name and every log line it
  writes say that it is a simulation.

A label that is not `valid` never carries an answer: it goes to human review, not to training.

The package by job: `records` (items, labels, runs, the protocol), `prompts`, `api` (the frontier
teacher), `simulation` (the simulated one and the simulator's gold). Import from here.
"""

from slm_flywheel.models.teacher.api import OpenAICompatibleTeacher
from slm_flywheel.models.teacher.records import (
    BUDGET_EXHAUSTED,
    OK,
    OUT_OF_SCHEMA,
    Teacher,
    TeacherItem,
    TeacherLabel,
    TeacherRun,
)
from slm_flywheel.models.teacher.simulation import LiveGold, SimulatedTeacher, ground_truth_path, read_ground_truth, request_gold_path

__all__ = [
    "BUDGET_EXHAUSTED",
    "OK",
    "OUT_OF_SCHEMA",
    "OpenAICompatibleTeacher",
    "SimulatedTeacher",
    "Teacher",
    "TeacherItem",
    "TeacherLabel",
    "TeacherRun",
    "LiveGold",
    "ground_truth_path",
    "request_gold_path",
    "read_ground_truth",
]
