"""The studies: each argument of the DeiT section as one command (`deitkit study NAME`)."""
from .catalog import STUDIES
from .runner import reanalyze, run_study
from .spec import BUDGETS, Budget, RunSpec, TeacherSpec

__all__ = ["STUDIES", "BUDGETS", "Budget", "RunSpec", "TeacherSpec", "reanalyze", "run_study"]
