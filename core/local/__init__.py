"""What a site runs on its own data: the local loops the phases call.

Training (``training``), architecture search (``search``), distillation (``distill``),
calibration of the confidence and anomaly heads and the domain (``calibration``) and
validation (``evaluation``). The networks they train are :mod:`core.model`'s; the
federated protocol around them is :mod:`core.phases`'.
"""
