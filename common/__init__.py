"""Code two or more jobs need: safe image decoding, config plumbing, storage access.

Nothing here imports Ray, torchvision or albumentations, so the Lambda image can ship it.
"""
