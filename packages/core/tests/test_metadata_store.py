"""Core's SQLite metadata store (``sqlite:///PATH``) against the metadata store contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.testing import MetadataStoreConformance


class TestSqliteMetadataStore(MetadataStoreConformance):
    @pytest.fixture
    def metadata_store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'metadata.db'}"

