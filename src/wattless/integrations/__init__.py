"""wattless inside other libraries' training loops: Hugging Face ``Trainer`` (hf.WattlessCallback)."""
