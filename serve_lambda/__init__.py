"""The Lambda inference API: the int8 TorchScript model of `python -m train export`
behind API Gateway (REST v1, HTTP API v2) or a Function URL, plus a web page to try it.

Serving imports only torch, Pillow, numpy, awslambdaric and `common`: never Ray,
torchvision, albumentations or `train` (tests/test_serve_package.py checks it).
"""
