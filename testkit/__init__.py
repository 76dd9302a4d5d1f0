"""What the tests (api_tests/) and the benchmarks (bench/) share, so that neither imports the other:

- testkit.service: start a real `kdserve up` (Service), upload, wait for a job or a condition,
  a throwaway PostgreSQL database. No torch.
- testkit.stack: a deployment in separate processes (redis-server, API, workers) to kill and restart.
- testkit.digits: scikit-learn's digits, a teacher trained on them, the files a user uploads (torch).
- testkit.hostile: hostile teachers and uploads, built from scratch (torch, onnx).

Not part of the installed package: it runs from a checkout (pytest's and `python -m bench.*`'s
working directory is the repository root)."""
