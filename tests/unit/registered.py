"""The functions function_app registers, read once per process: the SDK's ``get_functions()`` builds them and
refuses a second call ("does not have a unique function name")."""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def functions() -> dict[str, Any]:
    """Function name -> the SDK's function object."""
    import function_app

    return {f.get_function_name(): f for f in function_app.app.get_functions()}
