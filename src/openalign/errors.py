"""User-facing errors: one line naming the file, the field and the fix; the CLI exits non-zero."""


class UserError(Exception):
    """Bad input from the user (file, field, value). The CLI prints it on one line and exits 2."""
