"""The Open Inference Protocol (KServe v2), as Triton and KServe clients speak it."""
