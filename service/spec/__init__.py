"""A job spec's vocabulary and rules, torch-free, in one place: the API validates a job with them
at POST time and the worker uses the same classes again.

- methods.py: each distillation method's params class and facts (needs a teacher, labels, ...)
- architectures.py: each student architecture's params class and the checks that it can be built
- jobs.py: params validation and the rules that tie a job's method, student, data and teacher
- catalog.py: GET /v1/methods and /v1/architectures, built from the above
- errors.py: SpecError (a message and the spec field it is about); binding.py: the worker's loss
  or builder bound to a spec
"""
