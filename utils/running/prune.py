"""--prune-store: remove the chunk store's partitions that a config's models do not use, never automatically.

A store shared by several configs holds partitions each of them uses; pruning with one config removes the others'
too, so it lists what it removes, `--dry-run` lists without removing, and it is refused while any run holds the
store (utils.files.StoreLock). Quarantined chunks of a kept partition stay (look at them, then delete them by hand).
"""

from __future__ import annotations

import sys

from utils import exits
from utils.errors import UserError
from utils.inputs.keys import Config


def used_partitions(config: Config) -> set[str]:
    """Fingerprints of the partitions this config's models read or write: one per precision their devices run in,
    and both GPU and CPU precision where the machine decides it (`precision: auto` on `device: auto`)."""
    from utils.checks import resolve
    from utils.checks.preflight import chunk_settings, machine_decides_precision
    from utils.running.chunks import fingerprint

    models, problems = resolve.resolve_models(config)
    if problems:
        raise UserError(problems)
    used = set()
    for model in models:
        devices = list(model.config.devices)
        if machine_decides_precision(model.config):
            devices += ["cuda:0", "cpu"]
        used |= {fingerprint(chunk_settings(config, model, device)) for device in devices}
    return used


def prune_store(config: Config, remove: bool) -> int:
    """Remove (or, without `remove`, list) the partitions of config.store that the config does not use."""
    from utils.files import StoreLock
    from utils.running.store import partitions, prune
    from utils.units import size_text

    root = config.store
    used = used_partitions(config)
    if not root.is_dir():
        print(f"{root}: no chunk store yet; nothing to prune", file=sys.stderr)
        return exits.OK
    if not remove:
        for partition in partitions(root):
            what = "kept (used by this config)" if partition.fingerprint in used else "would be removed"
            if partition.settings is None:
                what = "earlier layout: tidied into partitions by --prune-store or the next run"
            print(f"{partition.directory}: {partition.chunks:,} chunk(s), {size_text(partition.bytes)}; {what}")
        return exits.OK
    with StoreLock(root, shared=False):
        removed = prune(root, used)
    for partition in removed:
        print(f"removed {partition.directory}: {partition.chunks:,} chunk(s), {size_text(partition.bytes)}")
    kept = [p for p in partitions(root) if p.fingerprint in used]
    freed = sum(p.bytes for p in removed)
    print(
        f"pruned {len(removed)} partition(s), {size_text(freed)}; kept {len(kept)} that this config uses in {root}",
        file=sys.stderr,
    )
    return exits.OK
