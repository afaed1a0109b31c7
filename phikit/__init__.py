"""phikit: Microsoft's Phi models (phi-1/1.5/2, Phi-3/3.5/4-mini, Phi-3.5-MoE) on plain PyTorch."""

from .hf.auto import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification,
                   AutoModelForTokenClassification)
from .model.cache import CacheProtocol, DynamicCache, KVCache, StaticCache
from .weights.checkpoint import CheckpointError
from .generation_config import GenerationConfig, merge_eos_ids
from .hub import HubError
from .tokenizer.batch_encoding import BatchEncoding
from .tokenizer.chat_template import ChatTemplateError
from .tokenizer.tokenization import AutoTokenizer, PhiTokenizer
from .pipelines import pipeline, TextGenerationPipeline
from .formats.configs import BitsAndBytesConfig, Int4WeightOnlyConfig, Int8WeightOnlyConfig
from .formats.int4 import Int4Linear
from .formats.int8 import Int8Linear
from .formats.lossless import LosslessBf16Config, LosslessBf16Linear
from .formats.quantize import quantize_model
from .lora import LoRAConfig, LoRALinear, apply_lora, load_adapter, merge_lora, save_adapter
from .training import Trainer, TrainingConfig
from .generation.logits_process import (LogitsProcessor, LogitsProcessorList, MinLengthLogitsProcessor,
                                        MinNewTokensLengthLogitsProcessor, MinPLogitsWarper, NoBadWordsLogitsProcessor,
                                        NoRepeatNGramLogitsProcessor, PrefixConstrainedLogitsProcessor,
                                        RepetitionPenaltyLogitsProcessor, SuppressTokensAtBeginLogitsProcessor,
                                        SuppressTokensLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
                                        TopPLogitsWarper, TypicalLogitsWarper, VocabLimitLogitsProcessor)
from .generation.outputs import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput
from .generation.stopping_criteria import (EosTokenCriteria, MaxLengthCriteria, MaxTimeCriteria, StoppingCriteria,
                                           StoppingCriteriaList, StopStringCriteria)
from .generation.streamers import TextIteratorStreamer, TextStreamer
from .config import CONFIG_CLASSES, ConfigError, Phi3Config, PhiConfig, PhiKitConfig, PhimoeConfig
from .hf.modeling import (Phi3ForCausalLM, Phi3ForSequenceClassification, Phi3ForTokenClassification, Phi3Model,
                       PhiForCausalLM, PhiForSequenceClassification, PhiForTokenClassification, PhiModel,
                       PhimoeForCausalLM, PhimoeForSequenceClassification, PhimoeModel)

__version__ = "0.1.0"

__all__ = [
    "BitsAndBytesConfig", "Int4Linear", "Int4WeightOnlyConfig", "Int8Linear", "Int8WeightOnlyConfig", "quantize_model",
    "LosslessBf16Config", "LosslessBf16Linear",
    "LoRAConfig", "LoRALinear", "apply_lora", "load_adapter", "merge_lora", "save_adapter", "Trainer",
    "TrainingConfig",
    "AutoTokenizer", "PhiTokenizer", "BatchEncoding", "ChatTemplateError", "pipeline", "TextGenerationPipeline",
    "TextStreamer", "TextIteratorStreamer", "GenerateDecoderOnlyOutput", "GenerateBeamDecoderOnlyOutput",
    "LogitsProcessor", "LogitsProcessorList", "MinLengthLogitsProcessor", "MinNewTokensLengthLogitsProcessor",
    "MinPLogitsWarper", "NoBadWordsLogitsProcessor", "NoRepeatNGramLogitsProcessor", "PrefixConstrainedLogitsProcessor",
    "RepetitionPenaltyLogitsProcessor", "SuppressTokensAtBeginLogitsProcessor", "SuppressTokensLogitsProcessor",
    "TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "TypicalLogitsWarper",
    "VocabLimitLogitsProcessor", "EosTokenCriteria", "MaxLengthCriteria", "MaxTimeCriteria", "StoppingCriteria",
    "StoppingCriteriaList", "StopStringCriteria",
    "AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification", "CheckpointError", "GenerationConfig", "HubError", "merge_eos_ids",
    "CONFIG_CLASSES", "ConfigError", "CacheProtocol", "DynamicCache", "KVCache", "StaticCache",
    "PhiConfig", "PhiKitConfig", "Phi3Config", "PhimoeConfig",
    "PhiModel", "PhiForCausalLM", "PhiForSequenceClassification", "PhiForTokenClassification",
    "Phi3Model", "Phi3ForCausalLM", "Phi3ForSequenceClassification", "Phi3ForTokenClassification",
    "PhimoeModel", "PhimoeForCausalLM", "PhimoeForSequenceClassification",
]
