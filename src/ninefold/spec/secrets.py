"""The spec never holds a secret: it is stored in the cluster, shown by the
API and written into events. Keys that would carry one are refused."""

from __future__ import annotations

from typing import Any


def refuse_password(data: Any) -> Any:
    """A model's `before` validator: refuse a `password` key, naming where a
    password goes instead (a file or an environment variable)."""
    if isinstance(data, dict) and "password" in data:
        # pydantic prints the input of an error (`input_value=...`): blank
        # the secret in place so no message or log ever carries it
        data["password"] = "<hidden>"
        raise ValueError(
            "key 'password' refused: the spec is stored and shown, so a password never "
            "goes in it; name a file (password_file) or a variable (password_env)"
        )
    return data
