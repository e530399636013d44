"""The one exception type for mistakes a user can fix: each problem is one line naming the culprit and the fix."""

from __future__ import annotations

MAX_LISTED = 20


class UserError(Exception):
    """Raised where user input enters; the CLI prints `lines` and exits with code 2, never a traceback."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

    def lines(self) -> list[str]:
        shown = self.problems[:MAX_LISTED]
        hidden = len(self.problems) - len(shown)
        return shown + ([f"... and {hidden} more problem(s) not shown; fix the ones above and rerun"] if hidden else [])


class ModelError(RuntimeError):
    """A checkpoint that cannot give correct embeddings; the worker reports it in one line and stops."""
