import os

import torch

# One thread: two threads on a busy two-core machine ran about 25x slower (NOTES.md).
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
