"""The Radial LoRA trainer: a Hydra app (`train/lora.py`) over configs/, Accelerate, PEFT and flow matching."""
