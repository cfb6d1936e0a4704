"""The foundation every avcall package may import; it imports none of them.

* :mod:`avcore.errors`: :class:`~avcore.errors.UsageError`, a bad input the user can fix.
* :mod:`avcore.config`: the one ``to_dict``/``from_dict`` rule for config dataclasses.
* :mod:`avcore.progress`: progress bars that write clean lines into logs.
* :mod:`avcore.onnx`: the one onnxruntime session factory.
* :mod:`avcore.metrics`: image errors (MSE, PSNR, SSIM with a Gaussian window 11, sigma 1.5).
* :mod:`avcore.training`: the training scaffold (checkpoint, resume, step/time budget, progress, Ctrl-C).
* :mod:`avcore.export`: ONNX export with ``check_model`` and the onnxruntime-vs-torch parity check.

Layering: ``avcore`` → ``capture``/``transport`` → ``renderer`` → ``decoder`` →
``encoder`` → ``runtime`` → ``avcall`` (the command). Torch-using parts (``training``,
``export``) are imported only by training code, never by the runtime path.
"""
