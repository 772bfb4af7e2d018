"""Operations on models: signed bundles, download, install into the on-device store, rollback, hot reload."""
