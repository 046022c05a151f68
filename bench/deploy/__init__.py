"""Deployment runtimes: ONNX export, equivalence checks, runtime sessions, machine peak, int8.

* :mod:`bench.deploy.export` - ``torch.onnx.export`` of a registered model, trying the dynamo
  and the TorchScript exporter; a model that cannot export becomes a row with the reason.
* :mod:`bench.deploy.check` - the exported graph on onnxruntime against the PyTorch model on
  fixed inputs (logit differences, thresholded-mask disagreement, per-model tolerance).
* :mod:`bench.deploy.backends` - the runtime table (eager PyTorch, onnxruntime, OpenVINO:
  one entry each, read by ``segbench speed`` and ``segbench export --int8/--bf16``) and
  their sessions, threads and precision pinned, behind one ``run(np.ndarray) ->
  np.ndarray`` callable.
* :mod:`bench.deploy.quantize` - onnxruntime int8 quantization, dynamic and static.

Nothing here imports onnxruntime or OpenVINO at module import time, so ``bench`` stays
importable where they are absent; the functions say why a backend is unavailable instead.
The machine peak measured over these runtimes (the roofline's ceiling) is
:mod:`bench.cost.peak`. Layering: ``deploy`` imports only ``bench.core`` and ``models``;
``speed`` and ``jobs`` use it.
"""
