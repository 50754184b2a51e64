"""INT8 quantization: calibrate on the dataset and write the INT8 model (docs/quantize.md).

Calibration images: ``quantize.calibration_images`` drawn from the whole dataset (sorted by id; neither
``dataset.limit`` nor sharding applies, so every shard of a sweep gets the same INT8 model), one per
equal stratum of the sorted list, the position within each stratum drawn from ``quantize.seed``. They
go through the same worker pool and ``preprocess`` hook as ``eval`` (:class:`ImageSource`).

* ``export.target=onnxruntime``: ONNX Runtime's static quantizer (QDQ format, per-channel weights, the
  ``quantize.method`` calibrator) writes ``<model_dir>/<model>_onnxruntime_int8.onnx`` beside the FP32
  export, with a ``.json`` record (fingerprint, sha256, calibration ids and tensor digest, exclusions).
  Node types the plugin lists in ``model.quantize_exclude_op_types`` (plus ``quantize.exclude_op_types``
  and the node names in ``quantize.exclude_nodes``) stay FP32.
* ``export.target=ascend``: the calibration tensors as raw ``.bin`` files in ``<model_dir>/calibration/
  <input name>/<index>.bin`` (one image each, ascending names: AMCT's ``--data_dir`` layout) and the AMCT
  command ``amct_onnx calibration --model= --save_path= --input_shape= --data_dir= --data_types=
  --batch_num=`` in ``<model_dir>/amct_<tag>.sh``; run when ``amct_onnx`` is on PATH (its deploy model then
  feeds ``stage=convert quantize=int8``), else written and printed.
"""
