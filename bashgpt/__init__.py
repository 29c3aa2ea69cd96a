"""bashgpt: train your own GPT-style model that writes bash.

Importing the package registers the ``bashgpt`` model type with the Transformers Auto
classes, and marks the config and model for code-copying export, so that every saved
model folder also loads with ``trust_remote_code=True`` where bashgpt is not installed.
"""

import os

# Must be in the environment before torch is first imported, or MPS ops without a kernel
# raise instead of falling back to the CPU.
os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM  # noqa: E402

from .configuration_bashgpt import PRESETS, BashGPTConfig  # noqa: E402
from .modeling_bashgpt import BashGPTForCausalLM, BashGPTModel, BashGPTPreTrainedModel  # noqa: E402

__version__ = "0.1.0"

AutoConfig.register("bashgpt", BashGPTConfig, exist_ok=True)
AutoModel.register(BashGPTConfig, BashGPTModel, exist_ok=True)
AutoModelForCausalLM.register(BashGPTConfig, BashGPTForCausalLM, exist_ok=True)
BashGPTConfig.register_for_auto_class()
BashGPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["BashGPTConfig", "BashGPTModel", "BashGPTForCausalLM", "BashGPTPreTrainedModel", "PRESETS", "__version__"]
