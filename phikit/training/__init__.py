"""Fine-tuning: datasets from text files and JSONL chat records, and a small resumable training loop."""

from .data import (DataCollator, TokenDataset, assistant_char_spans, chat_dataset, load_dataset, text_dataset,
                   tokenize_chat)
from .trainer import Trainer, TrainingConfig, TrainResult, latest_checkpoint, linear_schedule

__all__ = ["DataCollator", "TokenDataset", "assistant_char_spans", "chat_dataset", "load_dataset", "text_dataset",
           "tokenize_chat", "Trainer", "TrainingConfig", "TrainResult", "latest_checkpoint", "linear_schedule"]
