"""Shared output helpers for the experiment scripts."""


def markdown_table(rows: list[dict], cols: list[str]) -> str:
    """Rows of flat dicts as a markdown table over `cols` (floats to 4 significant digits, None as '-')."""

    def fmt(v):
        if v is None:
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out)
