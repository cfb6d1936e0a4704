"""What every model package shares, below all of them.

* :mod:`avcore.progress`: progress bars that write clean lines into logs.
* :mod:`avcore.onnx`: the one onnxruntime session factory.

Layering: ``capture``/``transport`` → ``avcore`` → ``renderer`` → ``decoder`` →
``encoder`` → ``runtime`` → ``avcall`` (the command). ``avcore`` imports no
other avcall package; its torch-using parts are imported only by training code.
"""
