"""The plain-text table every benchmark prints (right-aligned columns, a rule under the header)."""


def table(rows: list[list[str]]) -> str:
    """Format ``rows`` (the first one is the header) as aligned text."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
