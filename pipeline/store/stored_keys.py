"""The stored side of the plan: key columns of the chunks table, read in workers at the version the run
started from. No ray or vllm imports; pylance does the reading."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schema as s
from pipeline.store.sql import sql_list

LOOKUP_IDS = 1000
"""Document ids per lookup; each is one filtered scan that a B-tree on doc_id answers without reading the rest."""
_OPEN: dict[tuple[str, int], object] = {}


@dataclass(frozen=True)
class StoredKeys:
    """One version of a chunks table, for lookups by document id and for listing every stored id."""

    uri: str
    version: int
    storage_options: dict[str, str] | None = field(default=None, repr=False)

    def _dataset(self):
        key = (self.uri, self.version)
        if key not in _OPEN:
            import lance

            _OPEN.clear()  # one version per process: a worker serves one run
            _OPEN[key] = lance.dataset(self.uri, version=self.version, storage_options=self.storage_options or None)
        return _OPEN[key]

    def lookup(self, doc_ids: list[str]) -> pa.Table:
        """KEY_COLUMNS of every stored chunk of these documents."""
        parts = [
            self._dataset().to_table(
                columns=s.KEY_COLUMNS, filter=f"{s.DOC_ID} IN ({sql_list(doc_ids[i : i + LOOKUP_IDS])})"
            )
            for i in range(0, len(doc_ids), LOOKUP_IDS)
        ]
        return pa.concat_tables(parts) if parts else self.empty()

    def empty(self) -> pa.Table:
        return self._dataset().schema.empty_table().select(s.KEY_COLUMNS)

    def fragment_ids(self) -> list[int]:
        return [f.fragment_id for f in self._dataset().get_fragments()]

    def doc_ids(self, fragment_id: int) -> pa.Array:
        """The distinct document ids one fragment holds (deleted rows left out)."""
        table = self._dataset().get_fragment(fragment_id).to_table(columns=[s.DOC_ID])
        return pc.unique(table.column(s.DOC_ID).combine_chunks())

    def has_key_index(self) -> bool:
        return any(s.DOC_ID in idx.get("fields", []) for idx in self._dataset().list_indices())
