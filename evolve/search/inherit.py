"""Which children may continue from their parent's weights instead of training from scratch (pure).

With `operator.inherit`, a child that changes only settings that leave the
weights' shapes alone continues from its parent's final checkpoint, as PBT's
exploit does: same code, same shape keys, other numbers. Everything else
trains from scratch.
"""

from __future__ import annotations

import yaml


def inherit_refusal(parent_files: dict, child_files: dict, settings_file: str, shape_keys: list) -> str | None:
    """Why the child cannot continue from its parent's weights; None when it can."""
    changed = sorted(p for p in set(parent_files) | set(child_files)
                     if p != settings_file and parent_files.get(p) != child_files.get(p))
    if changed:
        return f"it changes {changed[0]}, not only settings"
    try:
        before, after = (yaml.safe_load(files[settings_file].decode()) for files in (parent_files, child_files))
    except (KeyError, UnicodeDecodeError, yaml.YAMLError):
        return f"its {settings_file} does not read as YAML"
    if not isinstance(before, dict) or not isinstance(after, dict):
        return f"its {settings_file} is not a mapping"
    shaped = [k for k in shape_keys if before.get(k) != after.get(k)]
    if shaped:
        return f"it changes {shaped[0]}, which shapes the weights"
    return None


def inherit_tokens(configured: int, budget: int) -> int:
    """The tokens an inheriting child trains: `operator.inherit_tokens`, else a quarter of the budget."""
    return configured or max(1, budget // 4)
