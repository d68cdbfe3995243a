"""headscope's weights: checkpoints and Hugging Face folders, as config dicts and state dicts.

It imports nothing of model/, so the model classes can offer from_pretrained without an import cycle.
"""
