"""The paper's networks, with the official state-dict key names: blocks, RoPE, DINOv2 image encoder,
text encoders, the trajectory VAE and the flow-matching motion planner; `sizes` holds the model-size configs.
"""
