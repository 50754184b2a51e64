"""``stage=compare``: the same preprocessed images through two backends, output by output and layer by layer.

``numbers`` (tensor differences and the pass rule), ``detections`` (matching two detection sets),
``pair`` (the backend that runs both sides and the sink that compares them), ``layers``
(intermediate tensors: torch hooks, ONNX extra outputs, Ascend dump files) and ``report``
(compare.json, compare.md, the plot, the terminal lines).
"""
