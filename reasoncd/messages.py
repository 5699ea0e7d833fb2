"""How error messages list things, so every command reads alike: long lists end in "... and N more", and sizes are
given as height x width."""

MAX_LISTED = 20  # items shown before "... and N more"


def listed(items, *, limit: int = MAX_LISTED, separator: str = "\n  ") -> str:
    """The first `limit` items joined by `separator`, then "... and N more" for the rest."""
    items = [str(item) for item in items]
    shown = items[:limit] + ([f"... and {len(items) - limit} more"] if len(items) > limit else [])
    return separator.join(shown)


def size_mismatch(sizes: dict) -> str | None:
    """None when every `(height, width)` in `{name: size}` is the same; else "name H x W, name H x W"."""
    if len({tuple(size) for size in sizes.values()}) <= 1:
        return None
    return ", ".join(f"{name} {height} x {width}" for name, (height, width) in sizes.items())
