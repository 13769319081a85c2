"""The checkpoints a run's cases load, each written once, before the first case that needs it: here, and on
every node of a launched world that shares no files with this process. Ranks only find them."""

from __future__ import annotations

from collections.abc import Iterable

from ..catalog import CaseSpec
from ..worlds.world import Pool, RankContext
from ..zoo import Family, FamilyUnavailable, ensure_checkpoint, ensure_checkpoints

NODE_CHECKPOINTS_S = 3600.0  # a launched world's nodes write the run's checkpoints (the sweep's: minutes)
Key = tuple[Family, str]  # a family and a checkpoint layout


def needed_by(cases: Iterable[CaseSpec]) -> list[Key]:
    return sorted({(c.family, c.layout) for c in cases if c.family and c.layout and not c.skip}, key=str)


class Checkpoints:
    """Every checkpoint written once per run: `prepare` writes those a batch of cases needs (a run's, before any
    world starts), `path` those of a case asked for alone (a test framework's), and neither writes one twice,
    nor tries twice one that cannot be written (FamilyUnavailable, said again by every case that needs it)."""

    def __init__(self, pool: Pool):
        self.pool = pool
        self._written: dict[Key, str | FamilyUnavailable] = {}

    def prepare(self, cases: Iterable[CaseSpec]) -> None:
        self._ensure(needed_by(cases))

    def path(self, case: CaseSpec) -> str | None:
        """The case's checkpoint; raises FamilyUnavailable where it cannot be written."""
        if not (case.family and case.layout):
            return None
        key = (case.family, case.layout)
        self._ensure([key])
        written = self._written[key]
        if isinstance(written, FamilyUnavailable):
            raise written
        return written

    def _ensure(self, keys: list[Key]) -> None:
        missing = [key for key in keys if key not in self._written]
        if not missing:
            return
        import transformers

        transformers.utils.logging.disable_progress_bar()  # one "Writing model shards" bar per checkpoint otherwise
        for key in missing:
            self._write(key)
        # Nodes that share no files with this process each write their own copies (none in a started world).
        self.pool.on_each_node(f"{__name__}:write_on_this_node", missing, NODE_CHECKPOINTS_S)

    def _write(self, key: Key) -> None:
        try:
            self._written[key] = str(ensure_checkpoint(*key))
        except FamilyUnavailable as exc:
            self._written[key] = exc


def write_on_this_node(ctx: RankContext, keys: list[Key]) -> None:
    """A launched world's task: each rank writes what its node's cache lacks, before any case needs it."""
    ensure_checkpoints(keys)


def write_checkpoints(cases: Iterable[CaseSpec]) -> None:
    """Writes the checkpoints the cases need, here: for a world a caller starts itself (a test's)."""
    ensure_checkpoints(needed_by(cases))
