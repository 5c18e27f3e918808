"""xkd: explanation-guided knowledge distillation for PyTorch.

A frozen teacher is explained with Captum; its saliency maps weight ReviewKD's review losses
through which a small student learns from it. See DESIGN in the repository README.
"""

__version__ = "0.1.0"
FORMAT_VERSION = 1
"""Version written into every file of a run folder (``format_version``)."""
