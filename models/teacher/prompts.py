"""What the frontier teacher is asked: the system prompt per task, the note on a retry, and the token bounds its budget reserves."""

from __future__ import annotations

from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from slm_flywheel.models.workload import TaskSpec


# Token bounds for one answer's JSON: `{"id": "12", "label": ""},` is about a dozen tokens.
TOKENS_PER_ANSWER = 16
TOKENS_PER_SLOT_KEY = 4  # `"name": null, ` around the key itself
TOKENS_FOR_ENVELOPE = 16  # `{"answers": [...]}`
TOKENS_PER_MESSAGE = 8  # the chat template's role markers around each message

RETRY_NOTE = (
    "\nThese texts were answered before outside the schema (a missing id, an answer outside the "
    "allowed values, or a value not copied from the text). Answer every id, strictly within the schema."
)



def system_prompt(spec: TaskSpec) -> str:
    if spec.task == "classification":
        return (
            f"You label customer messages for the {spec.name!r} workload. For each text, choose the one "
            f"intent that fits best from this label set: {', '.join(spec.labels)}.\n"
            'Answer with JSON only: {"answers": [{"id": "<the text\'s id>", "label": "<a label from the set>"}]}, '
            "one answer per id."
        )
    return (
        f"You extract slots from customer messages for the {spec.name!r} workload. For each text, fill "
        f"these slots where the text mentions them: {', '.join(spec.slots)}.\n"
        "Copy every value verbatim from the text: an exact substring, same spelling, case and digits, "
        "never normalized or paraphrased. Use null for a slot the text does not mention.\n"
        'Answer with JSON only: {"answers": [{"id": "<the text\'s id>", "slots": {"<slot>": "<value>" or null}}]}, '
        "one answer per id."
    )
