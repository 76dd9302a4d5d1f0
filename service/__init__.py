"""kdserve HTTP service: API, persistence, auth, CLI."""
