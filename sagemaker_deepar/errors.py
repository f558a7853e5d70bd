"""Error types that separate the user's mistakes from our bugs."""


class UserError(Exception):
    """A problem the user can fix: bad hyperparameter, bad data, bad request.

    The message must say what is wrong, where, and what is allowed.
    """


class RequestError(UserError):
    """A bad request: answered with 4xx and this message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class DataError(UserError):
    """A problem in the training or test data, located as ``file:line: field``."""

    def __init__(self, problems: list[str], total: int | None = None):
        self.problems = problems
        self.total = total if total is not None else len(problems)
        # The first line is what users see first (FailureReason): make it the first problem itself.
        lines = [problems[0] + (f" (and {self.total - 1} more problem(s) in the input data)" if self.total > 1 else "")]
        lines += problems[1:]
        if self.total > len(problems):
            lines.append(f"... and {self.total - len(problems)} more")
        super().__init__("\n".join(lines))


class OutputError(UserError):
    """An output or checkpoint folder that cannot take the job's results (not a folder, read-only, full).

    A ClientError: the volume size, mounts and checkpoint location are the job's configuration.
    """
