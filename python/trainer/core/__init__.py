"""Settings, database sessions, the blob store, errors: what every stage stands on."""
