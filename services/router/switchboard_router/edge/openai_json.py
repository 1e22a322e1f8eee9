"""Reading a JSON body field by field: each value of the wrong type is a problem named by its
JSON path (``messages[2].content[0].image_url.url``), collected like every other check of a
request so one 400 names them all.

Integers must be JSON integers within the proto field's range (a JSON ``true`` is not an
integer, ``1e30`` is not an int32): a value the router could not hold is refused here, by
name, instead of failing later.
"""

from __future__ import annotations

from typing import Any

Problems = list[tuple[str, str]]

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


class Reader:
    """Typed reads of a JSON object's members; each wrong type is appended to ``problems``
    and read as absent (None)."""

    def __init__(self) -> None:
        self.problems: Problems = []

    def bad(self, path: str, why: str) -> None:
        self.problems.append((path, why))

    def string(self, obj: dict[str, Any], key: str, path: str) -> str | None:
        value = obj.get(key)
        if value is None or isinstance(value, str):
            return value
        self.bad(path, "must be a string")
        return None

    def boolean(self, obj: dict[str, Any], key: str, path: str) -> bool | None:
        value = obj.get(key)
        if value is None or isinstance(value, bool):
            return value
        self.bad(path, "must be true or false")
        return None

    def number(self, obj: dict[str, Any], key: str, path: str) -> float | None:
        value = obj.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.bad(path, "must be a number")
            return None
        return float(value)

    def integer(
        self, obj: dict[str, Any], key: str, path: str, bounds: tuple[int, int] = INT32
    ) -> int | None:
        value = obj.get(key)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            value = int(value)  # 5.0 is 5, as JavaScript clients write it
        if isinstance(value, bool) or not isinstance(value, int):
            self.bad(path, "must be an integer")
            return None
        low, high = bounds
        if not low <= value <= high:
            self.bad(path, f"must be an integer from {low} to {high}")
            return None
        return value

    def obj(self, parent: dict[str, Any], key: str, path: str) -> dict[str, Any] | None:
        value = parent.get(key)
        if value is None or isinstance(value, dict):
            return value
        self.bad(path, "must be an object")
        return None

    def array(self, parent: dict[str, Any], key: str, path: str) -> list[Any] | None:
        value = parent.get(key)
        if value is None or isinstance(value, list):
            return value
        self.bad(path, "must be an array")
        return None

    def strings(self, parent: dict[str, Any], key: str, path: str) -> list[str]:
        """An array of strings (each wrong item named); [] when absent."""
        items = self.array(parent, key, path) or []
        out = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                out.append(item)
            else:
                self.bad(f"{path}[{i}]", "must be a string")
        return out

    def one_of(
        self, obj: dict[str, Any], key: str, path: str, allowed: dict[str, Any]
    ) -> Any | None:
        """The table's value for the string given; None when absent or not in the table."""
        value = self.string(obj, key, path)
        if value is None:
            return None
        if value not in allowed:
            self.bad(path, "must be one of " + ", ".join(repr(a) for a in allowed))
            return None
        return allowed[value]
