"""The inference side of the server, without torch: onnxruntime sessions and dynamic batching
(runtime), tokenisation for text students (textio, text), and the v2 binary tensor layout."""
