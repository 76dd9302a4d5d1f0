"""The kdserve HTTP server (never imports torch): routers, auth, uploads, store, serving, sandbox."""
