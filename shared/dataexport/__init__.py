"""IoT Central data export as code: the declarative file (``document``), its rules (``rules``), plan and apply."""

from .document import Document, DocumentError, Problem, parse, resolve
from .plan import Action, Outcome, Plan, Step, StepResult, apply, make_plan, read_app

__all__ = [
    "Action",
    "Document",
    "DocumentError",
    "Outcome",
    "Plan",
    "Problem",
    "Step",
    "StepResult",
    "apply",
    "make_plan",
    "parse",
    "read_app",
    "resolve",
]
