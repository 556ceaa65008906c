"""Evaluation: validation during training, weight-free metrics, and evaluation hooks.

validation.py  Validator(run): maybe_run(step) (held-out flow-matching loss at fixed noise levels + sample
               videos from fixed prompts and seeds) and run_end_hooks() (eval.hooks at the end of training)
metrics.py     PSNR / SSIM per frame, latent relative error, temporal flicker; JSON report and PNG plot
hooks.py       the hook plugin interface and registry, run_hooks (never raises), the in-process `flicker` hook
vbench.py      the `vbench` hook (VBench custom-input mode, a subprocess in VBench's environment)
reward.py      the `videoreward` hook (VideoAlign's VideoReward, a subprocess in its environment)
runners/       the scripts those subprocesses run (stdlib + the tool; they never import this repository)
__main__.py    python -m train.eval compare | hooks | list
"""
