"""Core's SQLite metadata store (``sqlite:///PATH``) against the metadata store contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.errors import ConfigError
from cluster.plugins import make_metadata_store
from cluster.testing import MetadataStoreConformance


class TestSqliteMetadataStore(MetadataStoreConformance):
    @pytest.fixture
    def metadata_store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'metadata.db'}"


def test_a_url_no_plugin_opens_is_refused_by_its_scheme_without_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        make_metadata_store("etcd://admin:s3cret@127.0.0.1:2379/cluster")
    message = str(caught.value)
    assert "etcd://" in message and "sqlite:///PATH" in message and "cluster-redis" in message
    assert "s3cret" not in message
