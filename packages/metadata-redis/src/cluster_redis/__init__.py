"""The head's metadata store on Redis: ``cluster start --head --metadata-store redis://HOST:PORT/DB``.

- ``url``: which URLs are Redis's (redis-py's schemes ``redis``, ``rediss``, ``unix``), the
  ``prefix`` option, the URL shown without its password (pure, no redis-py);
- ``store``: ``RedisMetadataStore``, core's ``MetadataStore`` contract on redis-py;
- ``plugin``: the ``cluster_make_metadata_store`` hook;
- ``testing``: ``RedisServer``, a throwaway ``redis-server`` for tests.
"""
