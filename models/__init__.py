"""Networks and their export (torch): the student zoo, teacher loaders (run only inside the teacher
jail), ONNX export of students, and the teacher loaders the jail runs (worker/teacher_host.py)."""
