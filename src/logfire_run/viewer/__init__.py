"""The trace viewer (`logfire-run-view`): reads the local store, never runs in the user's process."""
