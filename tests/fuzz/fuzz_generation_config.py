"""Fuzz target: bytes as a generation_config.json, loaded and validated (GenerationConfig.from_pretrained +
validate). Only GenerationArgumentError (a ValueError naming the file or the option) may escape."""

from __future__ import annotations

import os
import tempfile

SEEDS = [b'{"do_sample": true, "temperature": 0.7, "top_p": 0.9, "eos_token_id": [1, 2]}',
         b'{"max_new_tokens": 0}', b'{"bad_words_ids": [[1], [2, 3]], "suppress_tokens": [4]}',
         b'{"_from_model_config": true, "transformers_version": "4.40.0", "max_length": 4096}',
         b'{"top_k": -1, "stop_strings": ["\\n"], "early_stopping": "never", "num_beams": 2}', b'[]', b'{"a": 1e999}']

_DIR = tempfile.mkdtemp(prefix="fuzz-genconfig-")
_FILE = os.path.join(_DIR, "generation_config.json")


def TestOneInput(data: bytes) -> None:
    from phikit.generation_config import GenerationArgumentError, GenerationConfig

    with open(_FILE, "wb") as f:
        f.write(data)
    try:
        config = GenerationConfig.from_pretrained(_DIR)
        config.validate(vocab_size=100)
        config.to_diff_dict()
    except GenerationArgumentError:
        pass


if __name__ == "__main__":
    from fuzzing import fuzz

    fuzz(TestOneInput, SEEDS, ["phikit.generation_checks", "phikit.generation_config"])
