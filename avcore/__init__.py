"""The foundation every avcall package may import; it imports none of them.

* :mod:`avcore.errors`: :class:`~avcore.errors.UsageError`, a bad input the user can fix.
* :mod:`avcore.config`: the one ``to_dict``/``from_dict`` rule for config dataclasses.
* :mod:`avcore.progress`: progress bars that write clean lines into logs.
* :mod:`avcore.onnx`: the one onnxruntime session factory.

Layering: ``avcore`` → ``capture``/``transport`` → ``renderer`` → ``decoder`` →
``encoder`` → ``runtime`` → ``avcall`` (the command). Torch-using parts (training,
export) are imported only by training code, never by the runtime path.
"""
