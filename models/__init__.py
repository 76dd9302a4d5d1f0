"""Networks and their export (torch): the student zoo, teacher loaders (run only inside the teacher
jail), ONNX export of students, and the runner the jail starts (teacher_host)."""
