"""Errors a user can act on. The CLI prints them as one line and exits with status 2."""


class OmadError(Exception):
    pass
